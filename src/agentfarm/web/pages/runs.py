"""A run's page: its head, its events a page at a time (older ones on demand), and a live
stream of rendered event batches, each with the last seq as its SSE id. The stream resumes with
``?after=`` or ``Last-Event-ID`` after a drop; the page drops anything at or below the last seq
it has."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sse_starlette import EventSourceResponse

from agentfarm.domain import errors, models
from agentfarm.web import api, event_html, ids
from agentfarm.web.pages import access, templating

PAGE = 200  # events per page of the run view
RUN_ID = ids.RunId

router = APIRouter(include_in_schema=False)


@router.get("/runs/{run_id}")
async def run_page(request: Request, who: access.Viewer, run_id: RUN_ID) -> Response:
    store = api.store(request)
    run = await store.get_run(run_id)
    last = await store.last_seq(run_id)
    events = await store.list_events_before(run_id, before=last + 1, limit=PAGE)
    oldest = events[0].seq if events else last + 1
    return templating.page(
        request, "run.html", who, run=run, events=event_html.events_html(events),
        last_seq=last, oldest=oldest,
    )  # fmt: skip


@router.get("/runs/{run_id}/older")
async def run_older(
    request: Request, who: access.Viewer, run_id: RUN_ID, before: Annotated[int, Query(ge=1)]
) -> Response:
    events = await api.store(request).list_events_before(run_id, before=before, limit=PAGE)
    oldest = events[0].seq if events else 1
    html = event_html.events_html(events)
    more = ""
    if oldest > 1:
        more = templating.fragment("_older.html", run_id=run_id, oldest=oldest)
    body = more + str(html)  # both are escaped HTML: an autoescaped template and event_html
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/runs/{run_id}/head")
async def run_head(request: Request, who: access.Viewer, run_id: RUN_ID) -> Response:
    run = await api.store(request).get_run(run_id)
    return templating.page(request, "_run_head.html", who, run=run)


@router.get("/runs/{run_id}/live")
async def run_live(
    request: Request,
    who: access.Viewer,
    run_id: RUN_ID,
    after: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    store = api.store(request)
    await store.get_run(run_id)
    after = max(after, ids.last_event_id(request.headers.get("last-event-id")))
    hub = api.supervisor(request).hub

    async def stream() -> AsyncIterator[dict[str, Any]]:
        async for batch in hub.follow(run_id, after):
            html = event_html.events_html(batch)
            yield {"id": str(batch[-1].seq), "event": "events", "data": html}
            if any(e.type in (models.EventType.run_status, models.EventType.agent_result)
                   for e in batch):  # fmt: skip
                run = await store.get_run(run_id)
                yield {"event": "head", "data": templating.fragment("_run_head.html", run=run)}
        yield {"event": "end", "data": run_id}

    return EventSourceResponse(
        stream(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.post("/runs/{run_id}/stop")
async def run_stop(request: Request, who: access.Checked, run_id: RUN_ID) -> Response:
    with contextlib.suppress(errors.ConflictError):  # it ended meanwhile: the page shows how
        await api.supervisor(request).stop_run(run_id)
    return templating.see_other(f"/runs/{run_id}")


@router.post("/runs/{run_id}/resume")
async def run_resume(request: Request, who: access.Checked, run_id: RUN_ID) -> Response:
    with contextlib.suppress(errors.ConflictError):  # resumed or ended meanwhile: the page shows
        await api.supervisor(request).resume_run(run_id)
    return templating.see_other(f"/runs/{run_id}")


@router.post("/runs/{run_id}/delete")
async def run_delete(request: Request, who: access.Checked, run_id: RUN_ID) -> Response:
    try:
        await api.supervisor(request).delete_run(run_id)
    except errors.ConflictError:  # not ended yet: its page shows what it is doing
        return templating.see_other(f"/runs/{run_id}")
    return templating.see_other("/")
