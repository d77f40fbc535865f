"""A stream's body skips the layers that only look at a response's start: its start still goes
through them (security headers, error handling), its body messages straight out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from agentfarm.web import sse
from agentfarm.web.app import create_app
from tests.unit.conftest import make_settings


async def never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def chunks() -> AsyncIterator[bytes]:
    yield b"data: a\n\n"
    yield b""


def test_only_body_blind_middleware_sits_inside_direct_body(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    outer, *inner = [m.cls for m in app.user_middleware]  # outermost first
    assert outer is sse.DirectBody
    names = {getattr(cls, "__name__", str(cls)) for cls in inner}
    assert names <= sse.BODY_BLIND, (
        f"{names - sse.BODY_BLIND} sit between sse.DirectBody and the routes: a middleware "
        "that changes bodies must go outside it (or streams would skip it)"
    )


class Counting:
    """A middleware that adds a header to the start and counts the messages it relays."""

    def __init__(self, app: Any, *, swallow_start: bool = False) -> None:
        self.app, self.relayed, self.swallow_start = app, [], swallow_start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def relay(message: Message) -> None:
            self.relayed.append(message["type"])
            if message["type"] == "http.response.start":
                if self.swallow_start:
                    return
                message["headers"] = [*message["headers"], (b"x-seen", b"1")]
            await send(message)

        await self.app(scope, receive, relay)


async def _run(swallow_start: bool) -> tuple[Counting, list[Message]]:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await sse.EventStream(chunks())(scope, receive, send)

    inner = Counting(endpoint, swallow_start=swallow_start)
    app = sse.DirectBody(inner)
    out: list[Message] = []

    async def send(message: Message) -> None:
        out.append(message)
        if len(out) >= 3 - swallow_start:
            raise OSError("the viewer went")  # ends the endless stream

    await asyncio.wait_for(app({"type": "http", "method": "GET"}, never, send), 5)
    return inner, out


async def test_the_start_goes_through_the_middleware_the_body_straight_out() -> None:
    inner, out = await _run(swallow_start=False)
    assert (b"x-seen", b"1") in out[0]["headers"]
    assert [m.get("body") for m in out[1:]] == [b"data: a\n\n", b": ping\n\n"]
    assert inner.relayed == ["http.response.start"]  # no body message through it


async def test_a_start_held_back_inside_keeps_the_body_on_the_ordinary_path() -> None:
    # As BodySizeLimit does after answering 413 itself: the stream's messages are its to drop.
    inner, out = await _run(swallow_start=True)
    assert inner.relayed[:3] == ["http.response.start", "http.response.body", "http.response.body"]
    assert all(m["type"] == "http.response.body" for m in out)
