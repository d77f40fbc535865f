"""The JSON API under /api (OpenAPI at /docs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentfarm import __version__
from agentfarm.domain import diffs, errors, models
from agentfarm.store import Store
from agentfarm.store.secrets import NAME_RE, SecretStore
from agentfarm.supervisor import spend
from agentfarm.supervisor.hub import Push, ends_run
from agentfarm.supervisor.queue import QueueInfo
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web import event_wire, ids, sse
from agentfarm.web.auth import check_bearer

RUN_ID = ids.RunId
KEY = ids.ConfigKey

public = APIRouter(prefix="/api")
router = APIRouter(prefix="/api", dependencies=[Depends(check_bearer)])


def supervisor(request: Request) -> Supervisor:
    sup: Supervisor = request.app.state.supervisor
    return sup


def store(request: Request) -> Store:
    st: Store = request.app.state.store
    return st


def secret_store(request: Request) -> SecretStore:
    sec: SecretStore = request.app.state.secrets
    return sec


Sup = Annotated[Supervisor, Depends(supervisor)]
St = Annotated[Store, Depends(store)]
Sec = Annotated[SecretStore, Depends(secret_store)]


class Health(BaseModel):
    status: str = "ok"
    version: str = __version__


@public.get("/health", response_model=Health, tags=["meta"])
async def health() -> Health:
    return Health()


# --- configs -------------------------------------------------------------------------------
@router.post("/configs", status_code=201, response_model=models.AgentConfig, tags=["configs"])
async def create_config(body: models.ConfigIn, st: St) -> models.AgentConfig:
    return await st.create_config(models.AgentConfig(**body.model_dump()))


@router.get("/configs", response_model=list[models.AgentConfig], tags=["configs"])
async def list_configs(st: St) -> list[models.AgentConfig]:
    return await st.list_configs()


@router.get("/configs/{key}", response_model=models.AgentConfig, tags=["configs"])
async def get_config(key: KEY, st: St) -> models.AgentConfig:
    return await st.get_config(key)


@router.put("/configs/{key}", response_model=models.AgentConfig, tags=["configs"])
async def update_config(key: KEY, body: models.ConfigIn, st: St) -> models.AgentConfig:
    current = await st.get_config(key)
    updated = models.AgentConfig(**body.model_dump(), id=current.id, created_at=current.created_at)
    return await st.update_config(updated)


@router.delete("/configs/{key}", status_code=204, tags=["configs"])
async def delete_config(key: KEY, st: St) -> Response:
    await st.delete_config(key)
    return Response(status_code=204)


# --- runs ----------------------------------------------------------------------------------
class RunRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        # Exactly one of `config` and `spec`, as the validator below demands.
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["config"],
                    "properties": {"config": {"type": "string"}, "spec": {"type": "null"}},
                },
                {
                    "required": ["spec"],
                    "properties": {"spec": {"type": "object"}, "config": {"type": "null"}},
                },
            ]
        },
    )

    config: str | None = Field(None, max_length=64, description="Config id or name.")
    prompt: str | None = Field(
        None, max_length=200_000, description="Overrides the config's prompt for this run."
    )
    spec: models.AgentSpec | None = Field(None, description="A one-off config, not saved.")
    origin: Literal["person", "api"] = Field(
        "person",
        description="`api` for a program's launch: it waits behind people's launches "
        "(AGENTFARM_QUEUE_PERSON_FIRST).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> RunRequest:
        if (self.config is None) == (self.spec is None):
            raise ValueError("give exactly one of `config` (a saved config) or `spec`")
        return self


class RunOut(models.Run):
    """A run, and for a queued one its place in the queue."""

    queue: QueueInfo | None = Field(
        None, description="For a queued run: its position and what it waits for."
    )


async def with_queue(sup: Supervisor, runs: list[models.Run]) -> list[RunOut]:
    queued = [r.id for r in runs if r.status == models.RunStatus.queued]
    info = await sup.queue_info(queued) if queued else {}
    return [RunOut(**r.model_dump(), queue=info.get(r.id)) for r in runs]


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, max_length=200_000)


@router.post(
    "/runs",
    status_code=201,
    response_model=RunOut,
    tags=["runs"],
    responses={429: {"description": "The queue is full, or a budget refuses launches."}},
)
async def create_run(request: Request, body: RunRequest, sup: Sup, st: St) -> RunOut:
    spec, config = await resolve_run(body, st, request)
    run = await sup.submit(spec, config=config, origin=body.origin)
    return (await with_queue(sup, [run]))[0]


async def resolve_run(
    body: RunRequest, st: Store, request: Request
) -> tuple[models.AgentSpec, models.AgentConfig | None]:
    """What a run request launches: its saved config's spec or its own, prompt overridden.

    A one-off spec naming a stored secret to send to its repository's host
    (``git_token_secret``) needs the admin scope, as writing a config does: otherwise anyone
    who may launch could send any stored secret to a host of their choosing."""
    if body.spec is not None and body.spec.git_token_secret:
        principal = getattr(request.state, "principal", None)
        if principal is None or "admin" not in principal.scopes:
            raise errors.ForbiddenError(
                "a spec that names git_token_secret needs the admin scope (it sends that "
                "secret to the repository's host): launch a config an admin saved with it, "
                "or ask an admin"
            )
    config: models.AgentConfig | None = None
    if body.config is not None:
        try:
            config = await st.get_config(body.config)
        except errors.NotFoundError as exc:
            raise errors.InvalidInputError(
                f"no config named {body.config!r}; `agentfarm config ls` lists them"
            ) from exc
        spec = config.spec()
    elif body.spec is not None:
        spec = body.spec
    else:  # unreachable: the model validator demands one of them
        raise errors.InvalidInputError("give `config` or `spec`")
    if body.prompt is not None:
        spec = spec.model_copy(update={"prompt": body.prompt})
    return spec, config


@router.get("/runs", response_model=list[RunOut], tags=["runs"])
async def list_runs(
    st: St,
    sup: Sup,
    status_: Annotated[list[models.RunStatus] | None, Query(alias="status")] = None,
    config: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunOut]:
    return await with_queue(sup, await st.list_runs(statuses=status_, config=config, limit=limit))


@router.get("/runs/{run_id}", response_model=RunOut, tags=["runs"])
async def get_run(run_id: RUN_ID, st: St, sup: Sup) -> RunOut:
    return (await with_queue(sup, [await st.get_run(run_id)]))[0]


@router.get("/spend", response_model=spend.SpendReport, tags=["runs"])
async def get_spend(sup: Sup, st: St) -> spend.SpendReport:
    """Spend today and this month (farm, per config, per origin), the last 30 days, and the
    day and month budgets."""
    return await spend.report(sup.settings, sup.fleet.stats, await st.list_configs())


@router.post("/runs/{run_id}/stop", status_code=202, response_model=models.Run, tags=["runs"])
async def stop_run(run_id: RUN_ID, sup: Sup) -> models.Run:
    return await sup.stop_run(run_id)


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(
        None, min_length=1, max_length=200_000, description="What to tell the agent."
    )


@router.post(
    "/runs/{run_id}/resume",
    status_code=202,
    response_model=models.Run,
    tags=["runs"],
    responses={
        409: {
            "description": "The run is neither parked nor ended (succeeded, failed, stopped), "
            "an ended one came without a prompt, or it cannot be continued (a pipeline run, an "
            "agent or backend that cannot start a process in its session, its workspace "
            "removed); the message says which."
        }
    },
)
async def resume_run(run_id: RUN_ID, sup: Sup, body: ResumeRequest | None = None) -> models.Run:
    """Resume a parked run now, rather than when its usage limit resets (told ``prompt``, else
    to continue where it stopped), or, with a ``prompt``, continue an ended one: a new agent
    process in its session, workspace and branch."""
    return await sup.resume_run(run_id, body.prompt if body else None)


@router.delete(
    "/runs/{run_id}",
    status_code=204,
    tags=["runs"],
    responses={404: {"description": "No such run."}, 409: {"description": "Not ended yet."}},
)
async def delete_run(run_id: RUN_ID, sup: Sup) -> Response:
    """Delete an ended run: its files, row and events (its branch stays in the repository)."""
    await sup.delete_run(run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_TALK_409 = (
    "The run cannot take it now, and the message says why: it has ended or not started yet, "
    "its agent takes no follow-ups (`command`) or cannot be interrupted (`codex`, `command`), "
    "its follow-up window has closed, or (interrupt) no turn is running."
)


@router.post(
    "/runs/{run_id}/messages",
    status_code=202,
    tags=["runs"],
    responses={404: {"description": "No such run."}, 409: {"description": _TALK_409}},
)
async def send_message(run_id: RUN_ID, body: MessageRequest, sup: Sup) -> dict[str, str]:
    """A follow-up message for the running agent: queued on its stdin, answered as a turn of
    its own after the running one (or at once while it waits in its follow-up window)."""
    await sup.send(run_id, body.text)
    return {"status": "sent"}


@router.post(
    "/runs/{run_id}/interrupt",
    status_code=202,
    tags=["runs"],
    responses={404: {"description": "No such run."}, 409: {"description": _TALK_409}},
)
async def interrupt_run(run_id: RUN_ID, sup: Sup) -> dict[str, str]:
    """End the agent's running turn without ending the run: it then waits for a message
    (at least 10 minutes, or the config's follow-up window if longer)."""
    await sup.interrupt(run_id)
    return {"status": "interrupted"}


@router.get(
    "/runs/{run_id}/diff",
    response_model=diffs.RunDiff,
    tags=["runs"],
    responses={
        404: {"description": "No such run, or its workspace was removed."},
        409: {"description": "Not ended yet, or its backend keeps no readable workspace."},
    },
)
async def run_diff(
    run_id: RUN_ID,
    sup: Sup,
    limit: Annotated[int, Query(ge=1024, le=8 * 1024 * 1024)] = diffs.PATCH_LIMIT,
) -> diffs.RunDiff:
    """An ended run's changes: its branch against the commit it started from (files with
    their counts, and the patch cut after ``limit`` bytes, ``truncated`` then saying so)."""
    return await sup.diff(run_id, limit=limit)


@router.get(
    "/runs/{run_id}/events",
    response_model=list[models.Event],
    tags=["runs"],
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def run_events(
    request: Request,
    run_id: RUN_ID,
    sup: Sup,
    st: St,
    after: Annotated[int, Query(ge=0)] = 0,
    before: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    accept: Annotated[str, Header()] = "application/json",
    last_event_id: Annotated[str | None, Header()] = None,
) -> Any:
    await st.get_run(run_id)  # 404 for unknown runs, in both modes
    if "text/event-stream" in accept:
        start = after
        start = max(start, ids.last_event_id(last_event_id))
        stream = sse.EventStream(
            _sse(sup, run_id, start, lambda batch: stream.push(sse.json_frames(batch)))
        )
        return stream
    if before is not None:
        page = await st.list_events_before(run_id, before=before, limit=limit)
    else:
        page = await st.list_events(run_id, after=after, limit=limit)
    return Response(event_wire.json_array(page), media_type="application/json")


async def _sse(sup: Supervisor, run_id: str, after: int, push: Push) -> AsyncIterator[bytes]:
    """Each event as a message (its seq the id), a whole batch in one write; ``end`` last.
    While it waits, what comes goes to ``push`` first (straight to the socket)."""
    async for batch in sup.hub.follow(run_id, after, idle=sse.HEARTBEAT, push=push):
        if batch and ends_run(batch[-1]):  # the last batch: the end goes with it
            end = sse.message("end", json.dumps({"run_id": run_id}))
            yield sse.Final(sse.json_frames(batch) + end)
            return
        yield sse.json_frames(batch)  # empty when idle: a heartbeat
    if not sup.hub.closing:  # a server stopping is not the run ending: the client reconnects
        yield sse.message("end", json.dumps({"run_id": run_id}))


# --- secrets -------------------------------------------------------------------------------
class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(..., min_length=1, max_length=65_536)


#: Secret names are environment variable names (the store refuses others with a 422).
SECRET_NAME = {"pattern": NAME_RE.pattern}


@router.get("/secrets", tags=["secrets"])
async def list_secrets(sec: Sec) -> dict[str, list[str]]:
    return {"names": await asyncio.to_thread(sec.names)}


@router.put("/secrets/{name}", status_code=204, tags=["secrets"])
async def set_secret(
    name: Annotated[str, Path(max_length=128, json_schema_extra=SECRET_NAME)],
    body: SecretValue,
    sec: Sec,
) -> Response:
    await asyncio.to_thread(sec.set, name, body.value)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/secrets/{name}", status_code=204, tags=["secrets"])
async def delete_secret(
    name: Annotated[str, Path(max_length=128, json_schema_extra=SECRET_NAME)], sec: Sec
) -> Response:
    await asyncio.to_thread(sec.delete, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
