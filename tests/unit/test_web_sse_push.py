"""``EventStream.push`` on a real uvicorn server on loopback: chunks written straight to the
socket arrive whole and in order between the task's own, the response still ends cleanly, and
a push is declined (the task sends instead) whenever it cannot be done safely: another server,
an HTTP/1.0 client, a socket that has not taken what was written before."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import uvicorn

from agentfarm.web import app as app_module
from agentfarm.web import sse


class Streams:
    """An app with one route, ``/s``, whose stream yields what ``feed`` is given (None ends
    it); the responses made are kept to push to."""

    def __init__(self) -> None:
        self.app = app_module._App()
        self.feed: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.made: list[sse.EventStream] = []

        @self.app.get("/s")
        async def stream() -> sse.EventStream:
            async def chunks() -> AsyncIterator[bytes]:
                while (chunk := await self.feed.get()) is not None:
                    yield chunk

            response = sse.EventStream(chunks())
            self.made.append(response)
            return response


@contextlib.asynccontextmanager
async def serving(app: object) -> AsyncIterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_level="warning", http="h11")  # type: ignore[arg-type]
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)


async def raw_viewer(
    s: Streams, url: str, version: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, sse.EventStream]:
    """A viewer speaking HTTP/``version`` by hand, once its stream has sent a first chunk."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /s HTTP/{version}\r\nHost: t\r\n\r\n".encode())
    await s.feed.put(b"data: 1\n\n")
    await until(lambda: bool(s.made))
    return reader, writer, s.made[-1]


async def until(check: Callable[[], bool]) -> None:
    async def go() -> None:
        while not check():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(go(), 10)


async def test_pushed_chunks_arrive_whole_and_in_order_between_the_tasks_own() -> None:
    s = Streams()
    async with serving(s.app) as url, httpx.AsyncClient() as client:
        got = b""
        async with client.stream("GET", url + "/s") as response:
            await s.feed.put(b"data: 1\n\n")
            chunks = response.aiter_bytes()
            got += await anext(chunks)
            assert got == b"data: 1\n\n"
            stream = s.made[0]
            for i in range(2, 5):
                assert stream.push(f"data: {i}\n\n".encode())
            await s.feed.put(b"data: 5\n\n")
            await s.feed.put(None)
            async for chunk in chunks:
                got += chunk
        assert got == b"".join(f"data: {i}\n\n".encode() for i in range(1, 6))
        assert not stream.push(b"data: late\n\n")  # the response is over: nothing written


async def test_a_push_is_declined_without_uvicorn_and_for_http_1_0() -> None:
    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:  # another server's send
        sent.append(message.get("body", b""))

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    feed: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await feed.get()) is not None:
            yield chunk

    other = sse.EventStream(chunks())
    scope = {"type": "http", "method": "GET", sse.SERVER_SEND: send}
    task = asyncio.create_task(other(scope, receive, send))
    await feed.put(b"data: 1\n\n")
    await until(lambda: len(sent) == 2)
    assert not other.push(b"data: 2\n\n")  # not uvicorn's: the task's way
    await feed.put(None)
    await asyncio.wait_for(task, 10)
    assert sent == [b"", b"data: 1\n\n", b""]

    s = Streams()
    async with serving(s.app) as url:
        reader, writer, stream = await raw_viewer(s, url, "1.0")
        await asyncio.sleep(0.05)
        assert not stream.push(b"data: 2\n\n")  # no chunks for HTTP/1.0
        await s.feed.put(None)
        body = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert body.endswith(b"\r\n\r\ndata: 1\n\n")


async def test_a_viewer_that_does_not_read_gets_no_push_once_its_socket_is_full() -> None:
    s = Streams()
    async with serving(s.app) as url:
        _reader, writer, stream = await raw_viewer(s, url, "1.1")
        await until(lambda: stream._cycle is not None and stream.sending_since is None)
        big = b"data: " + b"x" * (1 << 20) + b"\n\n"
        pushed = 0
        while stream.push(big):  # the reader reads nothing: the kernel's buffers fill
            pushed += 1
            assert pushed < 200
        assert pushed >= 1
        assert stream._cycle.transport.get_write_buffer_size() > 0
        assert not stream.push(b"data: small\n\n")
        writer.close()
        await s.feed.put(None)


async def test_a_runs_viewers_share_one_pushed_message_with_the_head_from_the_run_feed() -> None:
    from agentfarm.domain import models
    from agentfarm.supervisor.runfeed import RunFeed
    from agentfarm.web.pages import runs

    run_id = "0123456789ab"

    def event(seq: int, kind: models.EventType, data: dict[str, object]) -> models.Event:
        return models.Event(run_id=run_id, seq=seq, type=kind, data=data)

    feed = RunFeed()
    plain = [event(1, models.EventType.agent_text, {"text": "hello"})]
    message = runs._pushable(plain, feed)
    assert message is not None and b"hello" in message
    assert runs._pushable(plain, feed) is message  # the next viewer of the run: the same bytes
    status = [*plain, event(2, models.EventType.run_status, {"status": "running"})]
    # A head change whose run has no recent change in the feed: the task's (a store read).
    assert runs._pushable(status, feed) is None
    run = models.Run(id=run_id, spec=models.AgentSpec(repo="/r", prompt="p"))
    run.status = models.RunStatus.running
    feed.changed(run)  # as the supervisor does after storing every batch
    result = [event(3, models.EventType.agent_result, {"result": "done"})]
    pushed = runs._pushable(result, feed)
    assert pushed is not None and b"event: head\n" in pushed and b"running" in pushed
    assert runs._pushable(result, feed) is pushed  # rendered once for every viewer
    assert await runs._head(_NoStore(), feed, run_id, 3) in pushed  # the task's way: the same


class _NoStore:
    async def get_run(self, run_id: str) -> object:
        raise AssertionError("the head was at hand: no store read")


def test_a_cycle_of_another_uvicorn_version_is_not_written_to() -> None:
    class RequestResponseCycle:  # named as uvicorn's, without the fields a push reads
        __module__ = "uvicorn.protocols.http.h11_impl"

        def __init__(self) -> None:
            self.transport = object()

        async def send(self, message: dict[str, Any]) -> None:
            pass

    scope = {"type": "http", "http_version": "1.1", sse.SERVER_SEND: RequestResponseCycle().send}
    assert sse._chunked_cycle(scope) is None


async def test_the_viewers_woken_by_a_head_change_read_the_run_once() -> None:
    """200 viewers of a run get its result together: one store read and one rendering of
    the head for them all; a read that failed is not kept, and a viewer that goes does not
    cancel the others' head."""
    from agentfarm.domain import errors, models
    from agentfarm.supervisor.runfeed import RunFeed
    from agentfarm.web.pages import runs

    reads = 0
    fail = False
    gate = asyncio.Event()

    class Store:
        async def get_run(self, run_id: str) -> models.Run:
            nonlocal reads
            reads += 1
            await gate.wait()
            if fail:
                raise errors.NotFoundError(f"run {run_id} not found")
            return models.Run(
                id=run_id, spec=models.AgentSpec(repo="/r", prompt="p"),
                status=models.RunStatus.succeeded,
            )  # fmt: skip

    store: Any = Store()
    feed = RunFeed()  # no recent change of the run in it: the store is read
    run_id = "0a1b2c3d4e5f"
    viewers = [asyncio.create_task(runs._head(store, feed, run_id, 7)) for _ in range(200)]
    await asyncio.sleep(0)
    viewers[0].cancel()  # one viewer goes meanwhile
    gate.set()
    heads = await asyncio.gather(*viewers[1:])
    assert reads == 1
    assert heads[0].startswith(b"event: head\n") and all(h is heads[0] for h in heads)
    assert await runs._head(store, feed, run_id, 7) is heads[0]  # kept for a late viewer

    fail = True
    for _ in range(2):  # not kept when it failed: each try reads again
        with contextlib.suppress(errors.NotFoundError):
            await runs._head(store, feed, run_id, 8)
    assert reads == 3
