"""Waiting for a process of a run to exit without polling: a pidfd the event loop watches."""

from __future__ import annotations

import asyncio
import itertools
import os

from agentfarm.backends.local import procs

#: Where pidfds are missing (Linux before 5.3): how often to look instead.
FALLBACK_POLL = 0.01


async def wait_exit(pid: int, started: int) -> None:
    """Return once the process ``pid`` (started at ``started``: see ``procs``) has exited, or
    is not that process any more. Callers bound the wait with ``asyncio.timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):
        await _poll(pid, started)
        return
    loop = asyncio.get_running_loop()
    try:
        # Opened before the identity check: the pidfd is then surely the process we mean.
        if not await asyncio.to_thread(procs.is_running, pid, started):
            return
        gone: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _settle, gone)
        try:
            await gone
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


async def exited_within(pid: int, started: int, seconds: float) -> bool:
    """Whether the process exits within ``seconds`` (see :func:`wait_exit`)."""
    try:
        async with asyncio.timeout(seconds):
            await wait_exit(pid, started)
    except TimeoutError:
        return False
    return True


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _poll(pid: int, started: int) -> None:
    for _ in itertools.count():
        if not await asyncio.to_thread(procs.is_running, pid, started):
            return
        await asyncio.sleep(FALLBACK_POLL)
