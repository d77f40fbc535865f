"""The dashboard: the runs, running and queued first, filtered by status; live over SSE (one
store poll per second per viewer; only changes are sent)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from agentfarm.domain import errors, models
from agentfarm.store import Store
from agentfarm.web import api
from agentfarm.web.pages import access, templating

FILTERS = ("active", "running", "parked", "queued", "succeeded", "failed", "stopped", "lost")

router = APIRouter(include_in_schema=False)


def _statuses(status: str | None) -> list[models.RunStatus] | None:
    if status in (None, "", "all"):
        return None
    if status == "active":
        return sorted(models.ACTIVE_STATUSES)
    try:
        return [models.RunStatus(status)]
    except ValueError as exc:
        raise errors.InvalidInputError(f"unknown status filter {status!r}") from exc


async def _dashboard_runs(store: Store, status: str | None) -> list[models.Run]:
    runs = await store.list_runs(statuses=_statuses(status), limit=100)
    # Running and queued first, then the rest by recency (list_runs is newest first).
    order = {
        models.RunStatus.running: 0,
        models.RunStatus.starting: 0,
        models.RunStatus.parked: 1,
        models.RunStatus.queued: 1,
    }
    return sorted(runs, key=lambda r: order.get(r.status, 2))


def _fingerprint(r: models.Run) -> tuple[object, ...]:
    started = r.started_at is None
    return (r.id, r.status, r.cost_usd, r.num_turns, r.branch, started, r.parked_until, r.warning)


def _signature(runs: list[models.Run]) -> str:
    return json.dumps([_fingerprint(r) for r in runs], default=str)


@router.get("/")
async def dashboard(request: Request, who: access.Viewer, status: str | None = None) -> Response:
    runs = await _dashboard_runs(api.store(request), status)
    return templating.page(
        request, "dashboard.html", who, runs=runs, status=status or "all", filters=FILTERS
    )


@router.get("/dashboard/live")
async def dashboard_live(
    request: Request, who: access.Viewer, status: str | None = None
) -> Response:
    store = api.store(request)
    _statuses(status)  # 422 now, not inside the stream

    async def stream() -> AsyncIterator[dict[str, Any]]:
        last = ""
        while True:
            runs = await _dashboard_runs(store, status)
            signature = _signature(runs)
            if signature != last:
                last = signature
                yield {"event": "runs", "data": templating.fragment("_runs.html", runs=runs)}
            await asyncio.sleep(1.0)

    return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})
