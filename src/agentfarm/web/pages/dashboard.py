"""The dashboard: the runs, running and queued first (each queued one with its place and what
it waits for), filtered by status; live over SSE, following the supervisor's feed of run
changes (``live_runs``: one shared copy per filter, rendered once per change, no store polling
per viewer; only changes are sent). Above them, the spend card."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from agentfarm.domain import errors, models
from agentfarm.supervisor import spend
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web import api, sse
from agentfarm.web.pages import access, live_runs, spend_card, templating

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


async def _dashboard_runs(
    sup: Supervisor, status: str | None
) -> tuple[list[models.Run], live_runs.Queue]:
    runs = await sup.store.list_runs(statuses=_statuses(status), limit=live_runs.LIMIT)
    places = await live_runs.places_of(sup, runs)
    return live_runs.order(runs, places), places


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
    statuses = _statuses(status)  # 422 now, not inside the stream
    lists: live_runs.LiveRuns = request.app.state.live_runs
    return sse.EventStream(lists.stream(frozenset(statuses) if statuses is not None else None))
