"""The SSE response and frames: one write per batch, heartbeats, a stuck or gone viewer cut
without holding anything, and each event's frame encoded once however many viewers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agentfarm.domain import models
from agentfarm.web import sse

SCOPE = {"type": "http", "method": "GET"}


async def never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def event(seq: int, text: str = "hi", run_id: str = "0123456789ab") -> models.Event:
    return models.Event(
        run_id=run_id, seq=seq, type=models.EventType.agent_text, data={"text": text}
    )


async def test_each_chunk_is_one_write_an_empty_one_a_heartbeat_and_the_end_closes() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n"  # two messages available at once
        yield b""
        yield b"event: end\ndata: x\n\n"

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(sse.EventStream(chunks())(SCOPE, never, send), 5)
    start, *bodies = sent
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-store"
    assert [b["body"] for b in bodies] == [
        b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n",
        b": ping\n\n",
        b"event: end\ndata: x\n\n",
        b"",
    ]
    assert [b["more_body"] for b in bodies] == [True, True, True, False]


async def test_a_final_chunk_goes_out_with_the_end_in_one_send() -> None:
    left = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"data: a\n\n"
            yield sse.Final(b"data: last\n\nevent: end\ndata: x\n\n")
            yield b"data: never read\n\n"
        finally:
            left.set()

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(sse.EventStream(chunks())(SCOPE, never, send), 5)
    _, *bodies = sent
    assert [(b["body"], b["more_body"]) for b in bodies] == [
        (b"data: a\n\n", True),
        (b"data: last\n\nevent: end\ndata: x\n\n", False),
    ]
    assert left.is_set()  # the chunks' generator is closed, nothing after the final read


async def test_a_viewer_that_stops_reading_is_cut_and_its_stream_closed() -> None:
    closed = asyncio.Event()
    made = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal made
        try:
            while True:
                made += 1
                yield b"data: x\n\n"
        finally:
            closed.set()

    async def send(message: dict[str, Any]) -> None:
        if message.get("body"):
            await asyncio.Event().wait()  # its socket takes nothing more

    response = sse.EventStream(chunks(), send_timeout=0.1)
    await asyncio.wait_for(response(SCOPE, never, send), 5)
    assert closed.is_set()  # its follower has left: nothing kept for it
    assert made == 1  # and nothing piled up while it was stuck


async def test_a_viewer_that_goes_ends_its_waiting_stream() -> None:
    closed = asyncio.Event()
    gone = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"data: x\n\n"
            await asyncio.Event().wait()  # a quiet run
            yield b"data: never\n\n"
        finally:
            closed.set()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message.get("body"):
            gone.set()

    await asyncio.wait_for(sse.EventStream(chunks())(SCOPE, receive, send), 5)
    assert closed.is_set()


def test_each_events_html_is_encoded_once_for_every_viewer() -> None:
    rendered: list[int] = []

    def render(e: models.Event) -> str:
        rendered.append(e.seq)
        return f'<div data-seq="{e.seq}">line one\r\nline two\rthree\nfour</div>'

    run = "abcdefabcdef"
    batch = [event(1, run_id=run), event(2, run_id=run)]
    messages = {sse.html_message(batch, render) for _ in range(10)}  # ten viewers
    assert rendered == [1, 2]
    (message,) = messages
    lines = message.decode().split("\n")
    assert lines[:3] == ["id: 2", "event: events", 'data: <div data-seq="1">line one']
    assert lines[3:6] == ["data: line two", "data: three", "data: four</div>"]
    assert message.endswith(b"four</div>\n\n")  # a blank line ends the message


def test_json_frames_carry_each_event_with_its_seq_as_the_id() -> None:
    run = "fedcbafedcba"
    events = [event(1, "a\nb", run), event(2, "c", run)]
    frames = sse.json_frames(events)
    assert sse.json_frames(events) is frames  # the batch joined once for its viewers
    assert sse.json_frames(events[:1]) == frames.split(b"\n\n")[0] + b"\n\n"
    parsed = [m for m in frames.decode().split("\n\n") if m]
    assert [m.split("\n")[0] for m in parsed] == ["id: 1", "id: 2"]
    assert json.loads(parsed[0].split("\n")[1].removeprefix("data: "))["data"] == {"text": "a\nb"}


def test_the_frame_cache_is_bounded_in_bytes() -> None:
    cache = sse.FrameCache(limit=10_000)
    for seq in range(1, 200):
        cache.get("json", event(seq), lambda e: b"x" * 500)
    assert 0 < cache.bytes <= 10_000


def test_a_lone_surrogate_in_html_is_replaced_not_a_broken_stream() -> None:
    assert sse.data_lines("a\ud800b") == b"data: a?b\n"


@given(
    st.lists(st.sampled_from(["a", "é", " ", "\n", "\r", "\ud800", "data: "]), max_size=12).map(
        "".join
    )
)
def test_data_lines_are_one_per_line_whatever_breaks_them(text: str) -> None:
    """Text without a carriage return takes a shorter way (no split): the same bytes. Every
    line break (LF, CR LF, a lone CR) starts a new ``data:`` line, nothing else does."""
    expected = "".join(f"data: {line}\n" for line in sse._LINES.split(text))
    assert sse.data_lines(text) == expected.encode("utf-8", "replace")
    lines = sse.data_lines(text).decode().split("\n")[:-1]
    assert all(line.startswith("data: ") for line in lines)
    assert len(lines) == text.count("\n") + text.count("\r") - text.count("\r\n") + 1
