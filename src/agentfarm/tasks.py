"""Guarded background tasks: every task is created here, logs its failure when it happens,
and is stopped through one ``stop`` that cancels, waits and reports stragglers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)


def _report(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %s failed", task.get_name(), exc_info=exc)


def spawn(
    coro: Coroutine[Any, Any, Any], *, name: str, into: set[asyncio.Task[Any]]
) -> asyncio.Task[Any]:
    task = asyncio.create_task(coro, name=name)
    into.add(task)
    task.add_done_callback(into.discard)
    task.add_done_callback(_report)
    return task


async def stop(tasks: Iterable[asyncio.Task[Any]], *, wait_seconds: float = 5.0) -> None:
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=wait_seconds)
    for task in still:
        log.warning("task %s did not stop within %.1fs", task.get_name(), wait_seconds)
