"""Forges and the pipeline over the API: set-up, the kill switch, the attempts seen, retry
and stop. The forge's webhook itself (`POST /api/forges/{name}/webhook`) is public and lives
with the pipeline service.

Who may do what is the scopes' one check (``domain.scopes``, made by ``check_bearer``): every
forge request is admin (forges hold tokens and say what agents may act on), reading the
pipeline is read, pausing, retrying and stopping are operate.

No answer ever carries a secret, except the webhook secret in the answer that made it.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agentfarm.domain import backend_config, errors
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import admin
from agentfarm.pipeline.admin import TOKEN_WORKS, ForgeAdmin
from agentfarm.settings import Settings
from agentfarm.store.pipeline import PipelineStore
from agentfarm.web import api, ids
from agentfarm.web.auth import check_bearer

#: The flag the pipeline keeps its kill switch in.
PAUSED_FLAG = "pipeline.paused"


#: Forge names are slugs (the schema says so; the server answers anything else with 404).
FORGE_NAME_SCHEMA = {"pattern": backend_config.SLUG_RE.pattern, "maxLength": 64}


def forge_name(
    name: Annotated[str, Path(description="Forge name.", json_schema_extra=FORGE_NAME_SCHEMA)],
) -> str:
    if not backend_config.SLUG_RE.fullmatch(name) or len(name) > 64:
        raise errors.NotFoundError(
            f"no forge named {ids.shown(name)}; `agentfarm forge ls` lists them"
        )
    return name


def attempt_id(
    attempt_id: Annotated[
        str, Path(description="Attempt id.", json_schema_extra=ids.RUN_ID_SCHEMA)
    ],
) -> str:
    if not ids.RUN_ID_RE.fullmatch(attempt_id):  # attempts' ids are made as runs' are
        raise errors.NotFoundError(
            f"no attempt with id {ids.shown(attempt_id)}; `agentfarm pipeline ls` lists them"
        )
    return attempt_id


ForgeName = Annotated[str, Depends(forge_name)]
AttemptId = Annotated[str, Depends(attempt_id)]


router = APIRouter(prefix="/api", dependencies=[Depends(check_bearer)])


def pipeline_store(request: Request) -> PipelineStore:
    return PipelineStore(api.store(request).database)


def admin_of(request: Request) -> ForgeAdmin:
    return ForgeAdmin(
        pipeline_store(request),
        api.store(request),
        api.secret_store(request),
        request.app.state.settings,
    )


FA = Annotated[ForgeAdmin, Depends(admin_of)]
PS = Annotated[PipelineStore, Depends(pipeline_store)]


def webhook_url(request: Request, name: str) -> str:
    """What to paste into the forge: the public URL when set, else this request's base."""
    settings: Settings = request.app.state.settings
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    return f"{base}/api/forges/{name}/webhook"


# --- shapes ----------------------------------------------------------------------------------
class ForgeOut(domain.Forge):
    webhook_url: str = Field(..., description="Paste this into the forge's webhook settings.")


class ForgeCreated(ForgeOut):
    webhook_secret: str = Field(
        ..., description="The webhook secret, shown this once: paste it into the forge."
    )


class ForgeUpdate(domain.ForgeSettings):
    """The forge's settings, replaced as a whole; secrets only when given."""

    token: SecretStr | None = Field(None, description="A new token, stored under token_secret.")
    webhook_secret: SecretStr | None = Field(None, description="A new webhook secret.")
    new_webhook_secret: bool = Field(
        False, description="Generate a new webhook secret; the answer shows it once."
    )


class ForgeUpdated(ForgeOut):
    webhook_secret: str | None = Field(
        None, description="The generated webhook secret, when one was asked for (shown once)."
    )


class TokenTest(BaseModel):
    ok: bool
    message: str


class PauseState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paused: bool = Field(..., strict=True, description="True: nothing new is dispatched.")


class ForgeRef(BaseModel):
    """What the pipeline's readers see of a forge: enough to name it and link its issues."""

    id: str
    name: str
    kind: domain.ForgeKind
    web_url: str = Field(..., description="Where people see its repositories and issues.")


class PipelineView(BaseModel):
    paused: bool
    forges: list[ForgeRef]
    attempts: list[domain.Attempt] = Field(..., description="Newest first.")
    issues: list[domain.TrackedIssue]


def _out(request: Request, forge: domain.Forge) -> ForgeOut:
    return ForgeOut(**forge.model_dump(), webhook_url=webhook_url(request, forge.name))


# --- forges ----------------------------------------------------------------------------------
@router.post("/forges", status_code=201, response_model=ForgeCreated, tags=["forges"])
async def create_forge(request: Request, body: domain.ForgeIn, fa: FA) -> ForgeCreated:
    """Set up a forge. The answer holds the webhook secret: it is not shown again."""
    forge, secret = await fa.add(body)
    return ForgeCreated(**_out(request, forge).model_dump(), webhook_secret=secret)


@router.get("/forges", response_model=list[ForgeOut], tags=["forges"])
async def list_forges(request: Request, fa: FA) -> list[ForgeOut]:
    return [_out(request, forge) for forge in await fa.list()]


@router.get("/forges/{name}", response_model=ForgeOut, tags=["forges"])
async def get_forge(request: Request, name: ForgeName, fa: FA) -> ForgeOut:
    return _out(request, await fa.get(name))


@router.put("/forges/{name}", response_model=ForgeUpdated, tags=["forges"])
async def update_forge(
    request: Request, name: ForgeName, body: ForgeUpdate, fa: FA
) -> ForgeUpdated:
    if body.new_webhook_secret and body.webhook_secret is not None:
        raise errors.InvalidInputError(
            "give a `webhook_secret` or ask for a `new_webhook_secret`, not both"
        )
    settings = domain.ForgeSettings.model_validate(
        body.model_dump(include=set(domain.ForgeSettings.model_fields))
    )
    forge = await fa.update(name, settings, token=body.token, webhook_secret=body.webhook_secret)
    secret = await fa.rotate_webhook_secret(name) if body.new_webhook_secret else None
    return ForgeUpdated(**_out(request, forge).model_dump(), webhook_secret=secret)


@router.delete(
    "/forges/{name}",
    status_code=204,
    tags=["forges"],
    responses={409: {"description": "It has active attempts (use force=true)."}},
)
async def delete_forge(
    request: Request,
    name: ForgeName,
    fa: FA,
    force: Annotated[
        bool, Query(description="Also when attempts are active: their runs are stopped.")
    ] = False,
) -> Response:
    """Remove a forge and its webhook secret (its token secret stays: it may be shared)."""
    await remove_forge(request, fa, name, force=force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def remove_forge(request: Request, fa: ForgeAdmin, name: str, *, force: bool) -> None:
    """Remove a forge; with ``force`` also when attempts are active, stopping their runs
    here: the attempts go with the forge, so the pipeline's loop would find none to stop."""
    if force:
        for attempt in await fa.active_attempts(name):
            if attempt.run_id is None:
                continue
            with contextlib.suppress(errors.NotFoundError, errors.ConflictError):
                await api.supervisor(request).stop_run(attempt.run_id)
    await fa.remove(name, force=force)


@router.post("/forges/{name}/test", response_model=TokenTest, tags=["forges"])
async def check_forge_token(name: ForgeName, fa: FA) -> TokenTest:
    """Call the forge with the stored token; the answer says whether it works, in words."""
    message = await fa.test(name)
    return TokenTest(ok=message.startswith(TOKEN_WORKS), message=message)


# --- the pipeline ----------------------------------------------------------------------------
async def settle(value: Any) -> Any:
    """The pipeline service's answer, whether its method is a coroutine or not."""
    return await value if inspect.isawaitable(value) else value


def service(request: Request) -> Any:
    found = getattr(request.app.state, "pipeline", None)
    if found is None:
        raise errors.ConfigurationError(
            "the pipeline is not running on this server: check its log at start-up"
        )
    return found


async def is_paused(request: Request, ps: PipelineStore) -> bool:
    found = getattr(request.app.state, "pipeline", None)
    if found is not None:
        return bool(await settle(found.paused()))
    return await ps.get_flag(PAUSED_FLAG) == "1"


async def set_paused(request: Request, ps: PipelineStore, paused: bool) -> bool:
    found = getattr(request.app.state, "pipeline", None)
    if found is not None:
        await settle(found.set_paused(paused))
    else:
        await ps.set_flag(PAUSED_FLAG, "1" if paused else None)
    return await is_paused(request, ps)


@router.get("/pipeline", response_model=PipelineView, tags=["pipeline"])
async def pipeline_view(
    request: Request,
    ps: PS,
    forge: Annotated[str | None, Query(max_length=64, description="Forge name.")] = None,
    state: Annotated[list[domain.AttemptState] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> PipelineView:
    """Attempts (newest first, filterable by forge and state) and the issues seen."""
    forge_id = (await ps.get_forge(forge)).id if forge else None
    attempts = await ps.list_attempts(forge_id=forge_id, limit=limit if not state else 1000)
    if state:
        attempts = [a for a in attempts if a.state in state][:limit]
    return PipelineView(
        paused=await is_paused(request, ps),
        forges=[
            ForgeRef(id=f.id, name=f.name, kind=f.kind, web_url=admin.web_root(f))
            for f in await ps.list_forges()
        ],
        attempts=attempts,
        issues=await ps.list_tracked_issues(forge_id=forge_id, limit=limit),
    )


@router.get("/pipeline/pause", response_model=PauseState, tags=["pipeline"])
async def get_pause(request: Request, ps: PS) -> PauseState:
    return PauseState(paused=await is_paused(request, ps))


@router.put("/pipeline/pause", response_model=PauseState, tags=["pipeline"])
async def put_pause(request: Request, body: PauseState, ps: PS) -> PauseState:
    """The kill switch: while paused nothing new is dispatched (runs going on go on)."""
    return PauseState(paused=await set_paused(request, ps, body.paused))


@router.post(
    "/pipeline/attempts/{attempt_id}/retry",
    status_code=202,
    response_model=domain.Attempt,
    tags=["pipeline"],
)
async def retry_attempt(request: Request, attempt_id: AttemptId, ps: PS) -> domain.Attempt:
    """Try an ended attempt's issue again (a new attempt, on a new branch)."""
    current = await ps.get_attempt(attempt_id)
    if current.active:
        raise errors.ConflictError(
            f"attempt {current.id} is still {current.state.value}: stop it first, or wait"
        )
    return await _attempt(await settle(service(request).retry(current.id)), ps, current.id)


@router.post(
    "/pipeline/attempts/{attempt_id}/stop",
    status_code=202,
    response_model=domain.Attempt,
    tags=["pipeline"],
)
async def stop_attempt(request: Request, attempt_id: AttemptId, ps: PS) -> domain.Attempt:
    """Stop an attempt (and its run); the issue is told."""
    current = await ps.get_attempt(attempt_id)
    return await _attempt(await settle(service(request).stop_attempt(current.id)), ps, current.id)


async def _attempt(answer: Any, ps: PipelineStore, fallback_id: str) -> domain.Attempt:
    if isinstance(answer, domain.Attempt):
        return answer
    return await ps.get_attempt(fallback_id)
