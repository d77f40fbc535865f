"""Server-sent events for many viewers, cheaply.

Each event's SSE frame (the JSON of the API stream, the rendered HTML of the cockpit's) is
encoded once and kept in a bounded cache keyed by (kind, run, seq): events never change, so
ten viewers of a run cost one encoding. A stream is a plain ASGI response that writes every
message available at once in one ``send`` (one write to the socket), sends a comment as a
heartbeat when idle, and cuts a viewer whose socket has not taken a write for
``SEND_TIMEOUT`` seconds: a stuck viewer holds no more than one batch, the others are not
held back, and its browser reconnects with ``Last-Event-ID`` and catches up from the store.

Events a viewer's follower takes while it waits (``Hub.follow``'s ``push``) go straight to the
socket through ``EventStream.push``, skipping the response's task and every layer of the app,
when the server is uvicorn (whose response cycle the app keeps in the scope, see
``SERVER_SEND``), the response is chunked, and the socket has taken all that was written
before; else they go the ordinary way, from the task.

(sse-starlette, used before, ran four tasks per connection and took a lock and re-encoded
each message per viewer; its shutdown signal is still what ends our streams when uvicorn
stops, see ``shutting_down``.)
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from sse_starlette.sse import AppStatus
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from agentfarm.domain import events as domain_events
from agentfarm.domain import models

log = logging.getLogger(__name__)

#: Encoded frames kept in memory, in bytes (about).
CACHE_BYTES = 16 << 20
#: Seconds without a message after which a comment keeps proxies from closing the stream.
HEARTBEAT = 15.0
#: Seconds a write may wait for a viewer's socket before the viewer is cut.
SEND_TIMEOUT = 30.0
_LINES = re.compile(r"\r\n|\r|\n")
MEDIA_TYPE = "text/event-stream"
_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
#: Where the app keeps the server's own ``send`` in a request's scope (``web.app``).
SERVER_SEND = "agentfarm.server_send"
#: uvicorn's response cycles, whose transport a stream may write its body chunks to.
#: What ``EventStream.push`` reads of a cycle.
_CYCLE_FIELDS = ("transport", "flow", "disconnected", "response_complete")
_CYCLES = {
    "uvicorn.protocols.http.h11_impl.RequestResponseCycle",
    "uvicorn.protocols.http.httptools_impl.RequestResponseCycle",
}


class FrameCache:
    """Encoded frames by (kind, run id, seq), least recently used out past ``limit`` bytes."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.bytes = 0
        self._frames: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()

    def get(self, kind: str, event: models.Event, encode: Callable[[models.Event], bytes]) -> bytes:
        key = (kind, event.run_id, event.seq)
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            return frame
        frame = self._frames[key] = encode(event)
        self.bytes += len(frame) + 100
        while self.bytes > self.limit and self._frames:
            _, old = self._frames.popitem(last=False)
            self.bytes -= len(old) + 100
        return frame


frames = FrameCache()


def data_lines(text: str) -> bytes:
    """``text`` as the ``data:`` lines of one message (any line break splits a line; a lone
    surrogate an agent printed becomes "?" rather than breaking the stream)."""
    if "\r" not in text:  # the usual case, without the split: the same lines
        return ("data: " + text.replace("\n", "\ndata: ") + "\n").encode("utf-8", "replace")
    return "".join(f"data: {line}\n" for line in _LINES.split(text)).encode("utf-8", "replace")


def message(event: str | None, data: str, *, id: int | None = None) -> bytes:
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event else "")
    return head.encode() + data_lines(data) + b"\n"


def _json_frame(event: models.Event) -> bytes:
    return f"id: {event.seq}\ndata: {domain_events.event_json(event)}\n\n".encode()


#: The last batches' messages, by (kind, run, first seq, last seq): a run's viewers, caught up
#: together, get the same batch, joined once (a batch is every event between its two seqs).
_batches: OrderedDict[tuple[str, str, int, int], bytes] = OrderedDict()
BATCHES_KEPT = 256


def _batch(kind: str, events: Sequence[models.Event], join: Callable[[], bytes]) -> bytes:
    if not events:
        return join()
    key = (kind, events[0].run_id, events[0].seq, events[-1].seq)
    chunk = _batches.get(key)
    if chunk is None:
        chunk = _batches[key] = join()
        if len(_batches) > BATCHES_KEPT:
            _batches.popitem(last=False)
    return chunk


def json_frames(events: Sequence[models.Event]) -> bytes:
    """The API stream's messages for ``events``: one per event, its seq as the id."""
    return _batch(
        "json", events, lambda: b"".join(frames.get("json", e, _json_frame) for e in events)
    )


def html_message(events: list[models.Event], render: Callable[[models.Event], str]) -> bytes:
    """One ``events`` message carrying every event's HTML, the last seq as its id. Each
    event's lines are encoded once (``render`` is cached too); the browser joins them."""

    def join() -> bytes:
        body = b"".join(frames.get("html", e, lambda e: data_lines(render(e))) for e in events)
        return f"id: {events[-1].seq}\nevent: events\n".encode() + body + b"\n"

    return _batch("html", events, join)


def shutting_down() -> bool:
    """uvicorn was asked to stop (sse-starlette's hook on its exit handler sees it, or the
    server's own flag, found through its signal handler)."""
    if AppStatus.should_exit:
        return True
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


async def watch_shutdown(on_exit: Callable[[], None], every: float = 0.25) -> None:
    """Call ``on_exit`` once the server is stopping (a task of the app's lifespan): the
    streams end at once instead of holding the shutdown for its grace period."""
    while not shutting_down():  # noqa: ASYNC110 (a flag uvicorn's signal handler sets)
        await asyncio.sleep(every)
    on_exit()


class Final(bytes):
    """A stream's last chunk: it goes out with the response's end, in one send (a viewer's
    last message and the close cost one step through the stack, not two)."""


class EventStream(StreamingResponse):
    """An SSE response from an async iterator of ready-encoded chunks (each may hold several
    messages, written in one send). An empty chunk means "nothing for a while": a heartbeat
    comment goes out instead; a ``Final`` one ends the stream."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        super().__init__(chunks, headers={**_HEADERS, **(headers or {})}, media_type=MEDIA_TYPE)
        self.chunks = chunks
        self.send_timeout = send_timeout
        #: When the write under way began (loop time), None between writes: ``_Reaper``
        #: cuts a stream whose write has waited too long (one timer for all, not one per
        #: write).
        self.sending_since: float | None = None
        self.cut = False
        self.task: asyncio.Task[object] | None = None
        #: uvicorn's response cycle, once the start has gone out (``push`` writes to it).
        self._cycle: Any = None

    def push(self, chunk: bytes) -> bool:
        """Write ``chunk`` to the viewer's socket now, as one HTTP chunk, if that can be done
        past the task: a uvicorn cycle, chunked, no write of ours under way, and the socket
        has taken everything before (a slow viewer goes the task's way, which the reaper
        watches). False: nothing was written, the task must send it."""
        cycle = self._cycle
        if cycle is None or self.sending_since is not None or self.cut:
            return False
        transport = cycle.transport
        if (
            cycle.disconnected
            or cycle.response_complete
            or cycle.flow.write_paused
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            return False
        transport.write(_http_chunk(chunk))
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        if scope.get("method", "GET").upper() == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        self._cycle = _chunked_cycle(scope)
        # Our task ends when the viewer goes; a task listening for that cancels the stream.
        loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        listener = asyncio.create_task(_disconnected(receive, self.task))
        reaper = _Reaper.of(loop)
        reaper.streams.add(self)

        async def write(body: bytes, more: bool) -> None:
            self.sending_since = loop.time()  # watched by the reaper until the socket takes it
            reaper.arm(loop, self.send_timeout)
            await send({"type": "http.response.body", "body": body, "more_body": more})
            self.sending_since = None

        try:
            last = b""
            async for chunk in self.chunks:
                if isinstance(chunk, Final):
                    last = bytes(chunk)
                    break
                await write(chunk or b": ping\n\n", True)
            await write(last, False)
        except OSError:
            return  # the viewer went: its browser reconnects
        except asyncio.CancelledError:
            if (listener.done() or self.cut) and self.task is not None:
                self.task.uncancel()  # cancelled by our listener or the reaper: the viewer went
                if self.cut:
                    log.info(
                        "an SSE viewer took no data for %.0f s and was cut (its browser "
                        "reconnects and resumes from its last event)", self.send_timeout,
                    )  # fmt: skip
                return
            raise
        finally:
            self._cycle = None
            reaper.streams.discard(self)
            listener.cancel()
            await _close(self.chunks)


_last_chunk: list[bytes] = [b"", b"0\r\n\r\n"]


def _http_chunk(chunk: bytes) -> bytes:
    """``chunk`` framed as an HTTP/1.1 chunk; the viewers of a run are pushed the same chunk
    one after the other, so the last one framed is kept (held, so its identity is its own)."""
    if chunk is not _last_chunk[0]:
        _last_chunk[:] = [chunk, b"%x\r\n%b\r\n" % (len(chunk), chunk)]
    return _last_chunk[1]


def _chunked_cycle(scope: Scope) -> Any:
    """uvicorn's response cycle for this request if its body goes out in HTTP/1.1 chunks
    (h11 chunks a response without a length to an HTTP/1.1 client; httptools says so)."""
    cycle: Any = getattr(scope.get(SERVER_SEND), "__self__", None)
    kind = type(cycle)
    if f"{kind.__module__}.{kind.__qualname__}" not in _CYCLES:
        return None
    if kind.__module__.endswith("h11_impl"):
        chunked = scope.get("http_version") == "1.1"
    else:
        chunked = getattr(cycle, "chunked_encoding", None) is True
    known = all(hasattr(cycle, name) for name in _CYCLE_FIELDS)
    if not (chunked and known and hasattr(cycle.flow, "write_paused")):
        return None  # another version's cycle: the task's way, never a failing push
    return cycle if cycle.transport is not None else None


class _Reaper:
    """Per event loop: cuts the streams whose write has waited longer than their timeout (a
    viewer that stopped reading), checking every half timeout while streams are open."""

    _loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Reaper] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.streams: set[EventStream] = set()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Reaper:
        reaper = cls._loops.get(loop)
        if reaper is None:
            reaper = cls._loops[loop] = cls()
        return reaper

    def arm(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        if self._timer is None:
            self._timer = loop.call_later(timeout / 2, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for stream in list(self.streams):
            since = stream.sending_since
            if since is not None and now - since > stream.send_timeout and stream.task:
                stream.cut = True
                stream.task.cancel()
        if self.streams:
            self.arm(loop, min(s.send_timeout for s in self.streams))


async def _disconnected(receive: Receive, stream: asyncio.Task[object] | None) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    if stream is not None:
        stream.cancel()


async def _close(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
