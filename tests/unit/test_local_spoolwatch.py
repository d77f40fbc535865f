"""The spool readers' wake-ups: inotify for writes, a pidfd for the writer's end, no polling."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentfarm.backends.base import ExitInfo, Record
from agentfarm.backends.local import exits, inotify, procs, spool, spoolwatch

#: A safety net far longer than any test waits: whatever is delivered came from a wake-up.
NO_SAFETY_NET = spool.FollowOptions(alive_every=60.0, degraded_poll=60.0)


def writer(path: Path) -> spool.SpoolWriter:
    return spool.SpoolWriter(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))


async def alive() -> bool:
    return True


async def take(stream: AsyncIterator[Record], timeout: float = 5.0) -> Record:
    return await asyncio.wait_for(anext(stream), timeout)


async def test_a_frame_after_a_quiet_period_is_delivered_without_polling(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    out = writer(path)
    watcher = spoolwatch.SpoolWatcher()
    try:
        async with watcher.subscribe(tmp_path, "spool") as sub:
            stream = spool.follow(path, 0, alive, NO_SAFETY_NET, wakeups=sub)
            out.write("stdout", b"first")
            assert (await take(stream)).data == b"first"
            await asyncio.sleep(0.5)  # quiet: the reader sleeps, nothing wakes it
            quiet_wakeups = sub.wakeups
            out.write("stdout", b"after the pause")
            assert (await take(stream)).data == b"after the pause"
            out.write("exit", spool.encode_exit(ExitInfo(exit_code=0)))
            assert (await take(stream)).kind == "exit"
            await stream.aclose()
        assert quiet_wakeups <= 1  # polling every few ms would have woken it ~100 times
    finally:
        watcher.close()
        os.close(out.fd)


async def test_an_idle_run_costs_no_wakeups(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    out = writer(path)
    watcher = spoolwatch.SpoolWatcher()
    try:
        async with watcher.subscribe(tmp_path, "spool") as sub:
            stream = spool.follow(path, 0, alive, NO_SAFETY_NET, wakeups=sub)
            task = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(1.0)
            assert not task.done()
            assert (sub.wakeups, watcher.reads) == (0, 0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await stream.aclose()
    finally:
        watcher.close()
        os.close(out.fd)


async def test_a_spool_created_after_the_watch_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    watcher = spoolwatch.SpoolWatcher()
    try:
        async with watcher.subscribe(tmp_path, "spool") as sub:
            stream = spool.follow(path, 0, alive, NO_SAFETY_NET, wakeups=sub)
            task = asyncio.ensure_future(take(stream))
            await asyncio.sleep(0.2)
            out = writer(path)
            out.write("stdout", b"born late")
            assert (await task).data == b"born late"
            os.close(out.fd)
            await stream.aclose()
    finally:
        watcher.close()


async def test_a_writer_killed_without_an_exit_frame_ends_lost(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    out = writer(path)
    proc = subprocess.Popen(["sleep", "60"])
    started = procs.start_time(proc.pid)
    assert started is not None

    async def running() -> bool:
        return await asyncio.to_thread(procs.is_running, proc.pid, started)

    watcher = spoolwatch.SpoolWatcher()
    try:
        async with watcher.subscribe(tmp_path, "spool") as sub:
            assert await sub.watch_process(proc.pid, started)
            stream = spool.follow(path, 0, running, NO_SAFETY_NET, wakeups=sub)
            out.write("stdout", b"working")
            assert (await take(stream)).data == b"working"
            proc.kill()
            proc.wait()
            last = await take(stream)  # the pidfd said so: no timer had to notice
            assert last.kind == "exit"
            assert last.exit is not None
            assert last.exit.lost
            assert "no exit record" in (last.exit.error or "")
            await stream.aclose()
    finally:
        watcher.close()
        os.close(out.fd)
        proc.kill()
        proc.wait()


async def test_a_queue_overflow_wakes_every_reader_to_rescan(tmp_path: Path) -> None:
    paths = [tmp_path / "a" / "spool", tmp_path / "b" / "spool"]
    watcher = spoolwatch.SpoolWatcher()
    outs = []
    try:
        for path in paths:
            path.parent.mkdir()
            outs.append(writer(path))
        # Subscribed under another name: the writes below wake nobody, as if their events
        # had been dropped by an overflowing queue.
        async with (
            watcher.subscribe(paths[0].parent, "other") as first,
            watcher.subscribe(paths[1].parent, "other") as second,
        ):
            streams = [
                spool.follow(paths[0], 0, alive, NO_SAFETY_NET, wakeups=first),
                spool.follow(paths[1], 0, alive, NO_SAFETY_NET, wakeups=second),
            ]
            tasks = [asyncio.ensure_future(anext(s)) for s in streams]
            await asyncio.sleep(0.1)
            for out in outs:
                out.write("stdout", b"missed")
            await asyncio.sleep(0.3)
            assert not any(t.done() for t in tasks)
            watcher.dispatch([inotify.Event(-1, inotify.IN_Q_OVERFLOW, "")])
            got = await asyncio.wait_for(asyncio.gather(*tasks), 5)
            assert [r.data for r in got] == [b"missed", b"missed"]
            for stream in streams:
                await stream.aclose()
    finally:
        watcher.close()
        for out in outs:
            os.close(out.fd)


async def test_a_watch_refused_by_the_limit_is_said_and_polled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(self: inotify.Inotify, path: str, mask: int) -> int:
        raise inotify.InotifyError(errno.ENOSPC, "the limit of inotify watches is reached")

    monkeypatch.setattr(inotify.Inotify, "add_watch", refuse)
    path = tmp_path / "spool"
    out = writer(path)
    watcher = spoolwatch.SpoolWatcher()
    options = spool.FollowOptions(alive_every=60.0, degraded_poll=0.01)
    try:
        with caplog.at_level(logging.WARNING):
            async with watcher.subscribe(tmp_path, "spool") as sub:
                assert not sub.watched
                stream = spool.follow(path, 0, alive, options, wakeups=sub)
                task = asyncio.ensure_future(take(stream))
                await asyncio.sleep(0.1)
                out.write("stdout", b"polled")
                assert (await task).data == b"polled"
                await stream.aclose()
        assert "inotify watches" in caplog.text
        assert "polled instead" in caplog.text
    finally:
        watcher.close()
        os.close(out.fd)


def test_watch_errors_say_what_and_where(tmp_path: Path) -> None:
    ino = inotify.Inotify()
    try:
        with pytest.raises(inotify.InotifyError, match=r"cannot watch .*missing"):
            ino.add_watch(tmp_path / "missing", spoolwatch.DIR_MASK)
        wd = ino.add_watch(tmp_path, spoolwatch.DIR_MASK)
        (tmp_path / "f").write_bytes(b"x")
        names = {event.name for event in ino.read() if event.wd == wd}
        assert names == {"f"}
        ino.rm_watch(wd)
    finally:
        ino.close()


async def test_wait_exit_follows_a_process_end() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        started = procs.start_time(proc.pid)
        assert started is not None
        assert not await exits.exited_within(proc.pid, started, 0.1)
        waiting = asyncio.ensure_future(exits.exited_within(proc.pid, started, 10))
        await asyncio.sleep(0.05)
        proc.kill()
        assert await waiting
        # Another process now under that pid would not be "it": the start time tells.
        assert await exits.exited_within(proc.pid, started + 1, 10)
    finally:
        proc.kill()
        proc.wait()
