"""A run's page: its head, its events a page at a time (older ones on demand), and a live
stream of rendered event batches, each with the last seq as its SSE id. The stream resumes with
``?after=`` or ``Last-Event-ID`` after a drop; the page drops anything at or below the last seq
it has."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from agentfarm.domain import errors, models
from agentfarm.store import Store
from agentfarm.supervisor.hub import ends_run
from agentfarm.supervisor.runfeed import RunFeed
from agentfarm.web import api, event_html, ids, sse
from agentfarm.web.pages import access, templating

PAGE = 200  # events per page of the run view
MESSAGE_LIMIT = 200_000  # as the API's MessageRequest
RUN_ID = ids.RunId

router = APIRouter(include_in_schema=False)


async def _place(request: Request, run: models.Run) -> Any:
    """A queued run's place in the queue (None otherwise)."""
    if run.status != models.RunStatus.queued:
        return None
    return (await api.supervisor(request).queue_info([run.id])).get(run.id)


@router.get("/runs/{run_id}")
async def run_page(request: Request, who: access.Viewer, run_id: RUN_ID) -> Response:
    store = api.store(request)
    run = await store.get_run(run_id)
    last = await store.last_seq(run_id)
    events = await store.list_events_before(run_id, before=last + 1, limit=PAGE)
    oldest = events[0].seq if events else last + 1
    return templating.page(
        request, "run.html", who, run=run, events=event_html.events_html(events),
        last_seq=last, oldest=oldest, place=await _place(request, run),
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
    place = await _place(request, run)
    return templating.page(request, "_run_head.html", who, run=run, place=place)


@router.get("/runs/{run_id}/changes")
async def run_changes(request: Request, who: access.Viewer, run_id: RUN_ID) -> Response:
    """The run page's Changes section (loaded when opened): files, counts, the patch."""
    await api.store(request).get_run(run_id)  # 404 for unknown runs
    diff, problem = None, None
    try:
        diff = await api.supervisor(request).diff(run_id)
    except (errors.ConflictError, errors.NotFoundError) as exc:
        problem = str(exc)  # running, workspace gone, a backend without one: said in place
    lines = patch_lines(diff.patch) if diff else []
    html = templating.fragment("_changes.html", diff=diff, problem=problem, lines=lines)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def patch_lines(patch: str) -> list[tuple[str, str]]:
    """Each line of a unified diff with its class (the template escapes the text)."""
    lines = []
    for line in patch.splitlines():
        if line.startswith(("diff --git", "+++ ", "--- ", "index ", "rename ", "new file")):
            kind = "diff-file"
        elif line.startswith("@@"):
            kind = "diff-hunk"
        elif line.startswith("+"):
            kind = "diff-add"
        elif line.startswith("-"):
            kind = "diff-del"
        else:
            kind = "diff-ctx"
        lines.append((kind, line))
    return lines


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

    def push(batch: list[models.Event]) -> bool:
        # What comes while the stream waits goes straight to the socket, the head too when
        # the batch changed it and the run's last change is at hand (``RunFeed.latest``).
        chunk = _pushable(batch, hub.runs)
        return chunk is not None and response.push(chunk)

    async def stream() -> AsyncIterator[bytes]:
        # Everything available at once goes out in one write: the events, then the head
        # when the run's status or figures changed (rendered once for all its viewers).
        async for batch in hub.follow(run_id, after, idle=sse.HEARTBEAT, push=push):
            if not batch:
                yield b""  # a heartbeat
                continue
            chunk = sse.html_message(batch, event_html.event_html)
            if any(e.type in HEAD_EVENTS for e in batch):
                chunk += await _head(store, hub.runs, run_id, batch[-1].seq)
            if ends_run(batch[-1]):  # the last batch: the end goes with it
                yield sse.Final(chunk + sse.message("end", run_id))
                return
            yield chunk
        if not hub.closing:  # a server stopping is not the run ending: the page reconnects
            yield sse.message("end", run_id)

    response = sse.EventStream(stream())
    return response


HEAD_EVENTS = (models.EventType.run_status, models.EventType.agent_result)
#: The last batch pushed and its message (None: its head is not at hand). The hub hands a
#: run's viewers the same batch one after the other: one look for them all (held: its identity
#: stays its own).
_last_push: list[Any] = [None, None]


def _pushable(batch: list[models.Event], feed: RunFeed) -> bytes | None:
    if batch is not _last_push[0]:
        message = sse.html_message(batch, event_html.event_html)
        head: bytes | None = b""
        if any(e.type in HEAD_EVENTS for e in batch):
            head = _head_now(feed, batch[-1].run_id, batch[-1].seq)
        _last_push[:] = [batch, None if head is None else message + head]
    pushed: bytes | None = _last_push[1]
    return pushed


#: The heads rendered lately, by (run, seq): each a future, so that the viewers that got the
#: same batch (200 of them, say) share one rendering, and at most one read of the store.
_heads: OrderedDict[tuple[str, int], asyncio.Future[bytes]] = OrderedDict()


def _keep(key: tuple[str, int], head: asyncio.Future[bytes]) -> asyncio.Future[bytes]:
    _heads[key] = head
    while len(_heads) > 256:
        _heads.popitem(last=False)
    return head


def _head_now(feed: RunFeed, run_id: str, seq: int) -> bytes | None:
    """The run's head as of event ``seq`` without waiting: rendered already, or from the run's
    last change in the feed (None: neither, the store must be read)."""
    key = (run_id, seq)
    head = _heads.get(key)
    if head is not None:  # rendered, or being read from the store: None until it is
        done = head.done() and not head.cancelled() and head.exception() is None
        return head.result() if done else None
    run = feed.latest(run_id)
    if run is None:
        return None
    rendered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    rendered.set_result(_render(run))
    return _keep(key, rendered).result()


async def _head(store: Store, feed: RunFeed, run_id: str, seq: int) -> bytes:
    """The run's head as a ``head`` message, as of event ``seq``: rendered once for all the
    viewers that got the same batch (a few recent ones kept)."""
    if (now := _head_now(feed, run_id, seq)) is not None:
        return now
    key = (run_id, seq)
    if (rendering := _heads.get(key)) is None:
        rendering = _keep(key, asyncio.create_task(_read_head(store, run_id)))
        rendering.add_done_callback(lambda task: _drop_failed(key, task))
    # Shielded: a viewer that goes does not cancel the others' rendering.
    return await asyncio.shield(rendering)


def _drop_failed(key: tuple[str, int], task: asyncio.Future[bytes]) -> None:
    """A head that could not be read is not kept: the next viewer tries again."""
    if (task.cancelled() or task.exception() is not None) and _heads.get(key) is task:
        del _heads[key]


async def _read_head(store: Store, run_id: str) -> bytes:
    return _render(await store.get_run(run_id))


def _render(run: models.Run) -> bytes:
    return sse.message("head", str(templating.fragment("_run_head.html", run=run, place=None)))


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


@router.post("/runs/{run_id}/message")
async def run_message(request: Request, who: access.Checked, run_id: RUN_ID) -> Response:
    """The reply box: a follow-up for the running agent. For htmx, a line saying it was sent
    (the message itself shows in the live stream) or why not; else back to the run page."""
    form = await request.form()
    text = form.get("text")
    if not isinstance(text, str) or not text.strip():
        return _talk_reply(request, run_id, False, "write a message first")
    if len(text) > MESSAGE_LIMIT:
        return _talk_reply(
            request, run_id, False, f"a message has at most {MESSAGE_LIMIT} characters"
        )
    try:
        await api.supervisor(request).send(run_id, text)
    except errors.ConflictError as exc:
        return _talk_reply(request, run_id, False, str(exc))
    return _talk_reply(request, run_id, True, "sent")


@router.post("/runs/{run_id}/interrupt")
async def run_interrupt(request: Request, who: access.Checked, run_id: RUN_ID) -> Response:
    try:
        await api.supervisor(request).interrupt(run_id)
    except errors.ConflictError as exc:
        return _talk_reply(request, run_id, False, str(exc))
    return _talk_reply(request, run_id, True, "interrupted: the agent waits for your message")


def _talk_reply(request: Request, run_id: str, ok: bool, message: str) -> Response:
    if not request.headers.get("hx-request"):
        return templating.see_other(f"/runs/{run_id}")
    html = templating.fragment("_talk_status.html", ok=ok, message=message)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.post("/runs/{run_id}/continue")
async def run_continue(request: Request, who: access.Checked, run_id: RUN_ID) -> Response:
    """An ended run's "continue" box: a new prompt in its session, workspace and branch. The
    page reloads onto the continued run (htmx), or says why not in place."""
    form = await request.form()
    text = form.get("text")
    if not isinstance(text, str) or not text.strip():
        return _talk_reply(request, run_id, False, "write what the agent should do next")
    if len(text) > MESSAGE_LIMIT:
        return _talk_reply(request, run_id, False, f"at most {MESSAGE_LIMIT} characters")
    try:
        await api.supervisor(request).resume_run(run_id, text)
    except errors.ConflictError as exc:
        return _talk_reply(request, run_id, False, str(exc))
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": f"/runs/{run_id}"})
    return templating.see_other(f"/runs/{run_id}")
