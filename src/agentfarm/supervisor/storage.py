"""Writes that must land even when the disk under the data directory is full: tried again,
less and less often, until there is space (``StorageFullError`` says the disk is full; the
store's transaction was rolled back, so trying again is safe)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agentfarm.backends.base import RunHandle
from agentfarm.domain import errors
from agentfarm.store import Store

log = logging.getLogger(__name__)

#: The longest pause between two tries (seconds).
MAX_PAUSE = 30.0


async def when_space(write: Callable[[], Awaitable[Any]], *, first_pause: float = 0.5) -> None:
    """``write()``, again after a pause each time the disk is full, until it lands. Any other
    error is logged and ends the tries (a restart's reconciliation takes over)."""
    pause = first_pause
    while True:
        try:
            await write()
            return
        except errors.StorageFullError:
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
        except Exception:
            log.exception("a write held back by a full disk failed for another reason")
            return


async def stop_and_end(
    run_id: str, handle: RunHandle | None, store: Store, end: Callable[[], Awaitable[Any]]
) -> None:
    """A run whose events cannot be stored (the disk is full): its agent is stopped at once
    (its output would only fill the disk more), the space kept back is given up so that the
    run's end lands, and the end is stored (tried again until there is space)."""
    log.error("run %s: the disk is full: stopping the agent", run_id)
    if handle is not None:
        try:
            await handle.stop(0)
        except Exception as exc:  # the end is what matters now
            log.warning("run %s: stopping the agent failed: %s", run_id, exc)
    await store.database.release_reserve()
    await when_space(end)
