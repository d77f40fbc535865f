"""The spool reader: a run's frames (see ``frames.py``) as :class:`Record` objects, live.

The cursor of a frame is the byte offset just past it: ``follow(after=cursor)`` starts
reading exactly there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from agentfarm.backends.base import ExitInfo, Record
from agentfarm.backends.local import frames, spoolwatch

HEADER = frames.HEADER
MAX_PAYLOAD = frames.MAX_PAYLOAD
KIND_BY_BYTE = frames.KIND_BY_BYTE
encode = frames.encode
SpoolWriter = frames.SpoolWriter


def encode_exit(info: ExitInfo) -> bytes:
    return frames.exit_payload(
        info.exit_code,
        signal=info.signal,
        stopped=info.stopped,
        oom_killed=info.oom_killed,
        lost=info.lost,
        error=info.error,
    )


def decode_exit(payload: bytes) -> ExitInfo:
    try:
        body = json.loads(payload)
    except ValueError:
        return ExitInfo(exit_code=None, lost=True, error="the exit frame is unreadable")
    return ExitInfo(
        exit_code=body.get("exit_code"),
        signal=body.get("signal"),
        stopped=bool(body.get("stopped")),
        lost=bool(body.get("lost")),
        oom_killed=bool(body.get("oom_killed")),
        error=body.get("error"),
    )


def parse(buffer: bytes, offset: int) -> tuple[list[Record], int]:
    """Whole frames in ``buffer`` (which starts at file ``offset``) and the bytes consumed."""
    records: list[Record] = []
    pos = 0
    while len(buffer) - pos >= HEADER.size:
        byte, length = HEADER.unpack_from(buffer, pos)
        end = pos + HEADER.size + length
        if end > len(buffer):
            break
        kind = KIND_BY_BYTE.get(byte)
        payload = bytes(buffer[pos + HEADER.size : end])
        pos = end
        if kind is None:
            continue  # a future kind: skip it rather than stop the run's stream
        exit_info = decode_exit(payload) if kind == "exit" else None
        records.append(Record(offset + pos, kind, payload, exit_info))
    return records, pos


def read_all(path: str | os.PathLike[str]) -> list[Record]:
    """Every whole frame in a spool file (blocking; for tests and tools)."""
    with open(path, "rb") as fh:
        records, _ = parse(fh.read(), 0)
    return records


@dataclass
class FollowOptions:
    #: The safety net: how often a quiet spool is looked at without a wake-up, and its writer
    #: checked for life when its exit is not watched (no pidfd).
    alive_every: float = 2.0
    #: How often a spool is looked at when inotify cannot watch its directory.
    degraded_poll: float = 0.05
    read_size: int = 1 << 20


async def follow(
    path: str | os.PathLike[str],
    after: int,
    alive: Callable[[], Awaitable[bool]],
    options: FollowOptions | None = None,
    *,
    wakeups: spoolwatch.Subscription | None = None,
) -> AsyncIterator[Record]:
    """Records with ``cursor > after``, following the growing file until the exit frame.

    ``alive`` says whether the writer may still append. When it is gone and the spool holds
    no exit frame, a synthetic exit record with ``lost=True`` ends the stream; its cursor is
    one past the last whole frame, so it is never confused with a real one.

    ``wakeups`` (from the backend's :class:`spoolwatch.SpoolWatcher`) says when to look
    again; without it, a watcher of its own serves this one call (tests, tools).
    """
    opts = options or FollowOptions()
    if wakeups is not None:
        async for record in _follow(os.fspath(path), after, alive, opts, wakeups):
            yield record
        return
    watcher = spoolwatch.SpoolWatcher()
    try:
        where, name = os.path.split(os.fspath(path))
        async with watcher.subscribe(where or ".", name) as sub:
            async for record in _follow(os.fspath(path), after, alive, opts, sub):
                yield record
    finally:
        watcher.close()


async def _follow(
    path: str,
    after: int,
    alive: Callable[[], Awaitable[bool]],
    opts: FollowOptions,
    wakeups: spoolwatch.Subscription,
) -> AsyncIterator[Record]:
    loop = asyncio.get_running_loop()
    fd = await asyncio.to_thread(_open_or_none, path)
    try:
        offset = after
        pending = b""
        checked_dead = False
        last_check = loop.time()
        while True:
            wakeups.clear()  # a write from now on wakes the wait below
            if fd is None:
                fd = await asyncio.to_thread(_open_or_none, path)
            if fd is not None and os.fstat(fd).st_size > offset + len(pending):
                # A frame bigger than a read is read whole at once: growing ``pending`` a
                # read at a time copied it over and over (quadratic, three copies at a time).
                size = max(opts.read_size, _missing(pending))
                chunk = await asyncio.to_thread(os.pread, fd, size, offset + len(pending))
                data = pending + chunk if pending else chunk
                del chunk, pending
                records, used = parse(data, offset)
                pending = data[used:] if used < len(data) else b""
                del data
                offset += used
                for record in records:
                    yield record
                    if record.kind == "exit":
                        return
                continue
            if checked_dead:
                error = "the run's monitor is gone and its spool has no exit record"
                if fd is None:
                    error = "the run's spool is missing (was the run directory removed?)"
                yield Record(offset + 1, "exit", exit=ExitInfo(None, lost=True, error=error))
                return
            due = not wakeups.writer_watched and loop.time() - last_check >= opts.alive_every
            if fd is None or wakeups.writer_gone or due:
                last_check = loop.time()
                if not await alive():
                    # One more look: the writer may have appended its exit frame and died
                    # between our size check and the liveness check.
                    checked_dead = True
                    continue
                # Not the writer we follow after all: the safety net checks from now on.
                wakeups.writer_gone = wakeups.writer_watched = False
            pause = opts.alive_every if wakeups.watched else opts.degraded_poll
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await wakeups.wait()
    finally:
        if fd is not None:
            os.close(fd)


def _missing(pending: bytes) -> int:
    """How many bytes the frame that ``pending`` starts with still lacks (0: unknown yet)."""
    if len(pending) < HEADER.size:
        return 0
    length = int(HEADER.unpack_from(pending, 0)[1])
    return HEADER.size + min(length, MAX_PAYLOAD) - len(pending)


def _open_or_none(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
