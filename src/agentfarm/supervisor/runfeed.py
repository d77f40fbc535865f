"""The farm-wide channel of run changes: every change to a run's row (status, cost, turns,
branch, parking, warning...), every new run and every deleted one, published by the supervisor
once the store has committed it, with the run as it now is. It lives on the hub (``Hub.runs``).

The dashboard's live list follows it instead of polling the store: a change bumps a version,
wakes the followers (each on a future of its own, resolved in one call per loop iteration) and
goes into a short log, from which a follower brings its copy of the list up to date without a
read. A follower further behind than the log reads the store once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

from agentfarm.domain import models

#: Changes kept for followers that are behind (a dashboard renders at most a few a second).
LOG_SIZE = 4096
#: How far back ``latest`` looks: the changes of a few hundred runs' last batches.
LATEST_WITHIN = 512


class RunFeed:
    def __init__(self, *, log_size: int = LOG_SIZE) -> None:
        self.version = 0
        #: (version, run id, the run as it now is; None: deleted).
        self._log: deque[tuple[int, str, models.Run | None]] = deque(maxlen=log_size)
        self._waiters: set[asyncio.Future[None]] = set()
        self._waking = False
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Let every follower go (a server shutting down)."""
        self._closing = True
        self._wake()

    def changed(self, run: models.Run | None) -> None:
        """``run`` was created or changed (as the store now has it; None: nothing changed)."""
        if run is not None:
            self._publish(run.id, run.model_copy())

    def deleted(self, run_id: str) -> None:
        self._publish(run_id, None)

    def _publish(self, run_id: str, run: models.Run | None) -> None:
        self.version += 1
        self._log.append((self.version, run_id, run))
        if self._waiters and not self._waking:
            self._waking = True
            asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._waking = False
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def latest(self, run_id: str, *, within: int = LATEST_WITHIN) -> models.Run | None:
        """The run as its last change left it, if that change is among the ``within`` newest
        (None: look in the store). Every event batch the supervisor stores is followed by its
        run's change, before the loop turns: a viewer woken by the batch finds it here."""
        for _, changed_id, run in itertools.islice(reversed(self._log), within):
            if changed_id == run_id:
                return run
        return None

    def since(self, version: int) -> list[tuple[str, models.Run | None]] | None:
        """The changes after ``version``, oldest first (None: the log no longer reaches back
        that far, read the store)."""
        if version >= self.version:
            return []
        if not self._log or self._log[0][0] > version + 1:
            return None
        return [(run_id, run) for v, run_id, run in self._log if v > version]

    async def wait(self, version: int, idle: float | None = None) -> bool:
        """Until the version passes ``version`` or the feed closes (True), or ``idle`` seconds
        pass without a change (False)."""
        if self.version > version or self._closing:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            async with asyncio.timeout(idle):
                await waiter
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)
        return True
