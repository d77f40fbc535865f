"""The dashboard: the runs, running and queued first (each queued one with its place and what
it waits for), filtered by status; live over SSE (one store poll per second per viewer; only
changes are sent). Above them, the spend card."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from agentfarm.domain import errors, models
from agentfarm.supervisor import queue, spend
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web import api
from agentfarm.web.pages import access, spend_card, templating

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


Queue = dict[str, queue.QueueInfo]


async def _dashboard_runs(sup: Supervisor, status: str | None) -> tuple[list[models.Run], Queue]:
    runs = await sup.store.list_runs(statuses=_statuses(status), limit=100)
    # Running, then parked and queued (queued in the queue's order), then the rest by
    # recency (list_runs is newest first).
    queued = [r.id for r in runs if r.status == models.RunStatus.queued]
    places = await sup.queue_info(queued) if queued else {}
    order = {
        models.RunStatus.running: 0,
        models.RunStatus.starting: 0,
        models.RunStatus.parked: 1,
        models.RunStatus.queued: 1,
    }

    def key(r: models.Run) -> tuple[int, int]:
        place = places.get(r.id)
        return order.get(r.status, 2), place.position if place else 0

    return sorted(runs, key=key), places


def _fingerprint(r: models.Run) -> tuple[object, ...]:
    started = r.started_at is None
    return (r.id, r.status, r.cost_usd, r.num_turns, r.branch, started, r.parked_until, r.warning)


def _signature(runs: list[models.Run], places: Queue) -> str:
    return json.dumps(
        [_fingerprint(r) for r in runs] + [(k, v.model_dump()) for k, v in sorted(places.items())],
        default=str,
    )


@router.get("/")
async def dashboard(request: Request, who: access.Viewer, status: str | None = None) -> Response:
    sup = api.supervisor(request)
    runs, places = await _dashboard_runs(sup, status)
    report = await spend.report(sup.settings, sup.fleet.stats, await sup.store.list_configs())
    return templating.page(
        request,
        "dashboard.html",
        who,
        runs=runs,
        queue=places,
        status=status or "all",
        filters=FILTERS,
        spend=report,
        bars=spend_card.bars(report.days),
        chart_width=spend_card.WIDTH,
        chart_height=spend_card.HEIGHT,
    )


@router.get("/dashboard/live")
async def dashboard_live(
    request: Request, who: access.Viewer, status: str | None = None
) -> Response:
    sup = api.supervisor(request)
    _statuses(status)  # 422 now, not inside the stream

    async def stream() -> AsyncIterator[dict[str, Any]]:
        last = ""
        while True:
            runs, places = await _dashboard_runs(sup, status)
            signature = _signature(runs, places)
            if signature != last:
                last = signature
                html = templating.fragment("_runs.html", runs=runs, queue=places)
                yield {"event": "runs", "data": html}
            await asyncio.sleep(1.0)

    return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})
