"""The orchestration API for external dispatchers: ``POST /api/orchestration/dispatch`` starts
a run under a client-chosen idempotency key; repeating the request returns the same run.

A dispatch is recorded *before* its run is created, under an id chosen for the run, and the
run is then created with that id: a crash in between leaves a key without a run (answered with
a clear 409), never a second launch. If creating the run fails (an unknown config, missing
credentials) the record is removed again, so the same request may be repeated once fixed.
Concurrent repeats in this server wait for each other (one lock per key); the store's primary
key (caller, key) decides everything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status
from pydantic import BaseModel, Field, field_validator

from agentfarm.domain import errors, models
from agentfarm.domain import pipeline as domain
from agentfarm.store import Store
from agentfarm.store.pipeline import PipelineStore
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web import api, identity
from agentfarm.web.auth import check_bearer

router = APIRouter(
    prefix="/api/orchestration", tags=["orchestration"], dependencies=[Depends(check_bearer)]
)
Who = Annotated[identity.Principal, Depends(check_bearer)]
KEY_DOC = "The client's idempotency key: 1 to 200 printable characters."


#: No control characters and not only spaces: the schema states it, the server checks it.
KEY_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
_KEY_RE = re.compile(KEY_PATTERN)


def _check_key(value: str) -> str:
    if not _KEY_RE.match(value):
        raise ValueError("the idempotency key must be printable characters, not only spaces")
    return value


class DispatchRequest(api.RunRequest):
    """A run request (as ``POST /api/runs``) with the client's idempotency key."""

    idempotency_key: str = Field(
        ...,
        min_length=1,
        max_length=200,
        description=KEY_DOC,
        json_schema_extra={"pattern": KEY_PATTERN},
    )

    @field_validator("idempotency_key")
    @classmethod
    def _printable(cls, value: str) -> str:
        return _check_key(value)


class DispatchOut(BaseModel):
    idempotency_key: str
    run_id: str
    dispatched_at: datetime
    run: models.Run = Field(..., description="The dispatched run, as it is now.")


def pipeline_store(request: Request) -> PipelineStore:
    found: PipelineStore | None = getattr(request.app.state, "pipeline_store", None)
    if found is None:
        found = request.app.state.pipeline_store = PipelineStore(api.store(request).database)
    return found


Pipe = Annotated[PipelineStore, Depends(pipeline_store)]


def caller_of(who: identity.Principal) -> str:
    """Whose keys these are: a user's (all their tokens and sessions share them), else the
    server's own token's, else a forward-auth name's."""
    if who.user_id is not None:
        return who.user_id
    return "token" if who.kind == "token" else f"{who.kind}:{who.name}"


def digest_of(body: DispatchRequest) -> str:
    """The request without its key, canonical: the same request is the same digest."""
    fields = body.model_dump(mode="json", exclude={"idempotency_key"})
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class _KeyLocks:
    """One asyncio lock per key while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _locks(request: Request) -> _KeyLocks:
    found: _KeyLocks | None = getattr(request.app.state, "dispatch_locks", None)
    if found is None:
        found = request.app.state.dispatch_locks = _KeyLocks()
    return found


async def _answer(st: Store, dispatch: domain.Dispatch) -> DispatchOut:
    try:
        run = await st.get_run(dispatch.run_id)
    except errors.NotFoundError:
        raise errors.ConflictError(
            f"the run {dispatch.run_id} dispatched with the idempotency key "
            f"{dispatch.key!r} does not exist (it was deleted, or the server stopped while "
            "launching it); dispatch again with a new key"
        ) from None
    return DispatchOut(
        idempotency_key=dispatch.key,
        run_id=dispatch.run_id,
        dispatched_at=dispatch.created_at,
        run=run,
    )


@router.post(
    "/dispatch",
    status_code=201,
    response_model=DispatchOut,
    responses={
        200: {"model": DispatchOut, "description": "A repeat: the run of the first request."},
        201: {"description": "A new run was queued."},
        409: {"description": "The key was used for another request, or its run was deleted."},
    },
)
async def dispatch(
    body: DispatchRequest,
    request: Request,
    response: Response,
    who: Who,
    sup: api.Sup,
    st: api.St,
    pipe: Pipe,
) -> DispatchOut:
    """Start a run (as ``POST /api/runs``) under ``idempotency_key``. The same key with the
    same request answers 200 with the same run, without launching again, also after a restart
    or when the repeats race; the same key with another request is a 409. Keys belong to their
    caller (a user, or the server's own token). Needs the ``operate`` scope."""
    caller, key, digest = caller_of(who), body.idempotency_key, digest_of(body)
    async with _locks(request).hold((caller, key)):
        found = await pipe.get_dispatch(caller, key)
        if found is None:
            reserved = domain.Dispatch(
                key=key, caller=caller, digest=digest, run_id=models.new_id()
            )
            try:
                found = await pipe.create_dispatch(reserved)
            except errors.ConflictError:  # another server process recorded it first
                found = await pipe.get_dispatch(caller, key)
                if found is None:  # recorded and removed again meanwhile (its launch failed)
                    raise
            else:
                await _launch(body, request, sup, st, pipe, found)
                response.status_code = status.HTTP_201_CREATED
                return await _answer(st, found)
        if found.digest != digest:
            raise errors.ConflictError(
                f"the idempotency key {key!r} was used for another request (run "
                f"{found.run_id}); repeat that request as it was, or pick a new key"
            )
        response.status_code = status.HTTP_200_OK
        return await _answer(st, found)


async def _launch(
    body: DispatchRequest,
    request: Request,
    sup: Supervisor,
    st: Store,
    pipe: PipelineStore,
    record: domain.Dispatch,
) -> None:
    try:
        spec, config = await api.resolve_run(body, st, request)
        await sup.submit(spec, config=config, run_id=record.run_id, origin=body.origin)
    except BaseException:
        # Nothing was launched: free the key so that the request can be repeated once fixed.
        await asyncio.shield(pipe.delete_dispatch(record.caller, record.key))
        raise


@router.get(
    "/dispatch/{key:path}",
    response_model=DispatchOut,
    responses={404: {"description": "This caller has not used the key."}},
)
async def get_dispatch(
    key: Annotated[str, Path(min_length=1, max_length=200, description=KEY_DOC)],
    who: Who,
    st: api.St,
    pipe: Pipe,
) -> DispatchOut:
    """The dispatch made with this idempotency key, and its run as it is now."""
    found = await pipe.get_dispatch(caller_of(who), key)
    if found is None:
        raise errors.NotFoundError(
            f"no dispatch with the idempotency key {key!r} by this caller; keys belong to "
            "the user (or token) that dispatched"
        )
    return await _answer(st, found)
