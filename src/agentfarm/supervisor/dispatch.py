"""The dispatcher: queued runs are launched, oldest first, while fewer than
``AGENTFARM_MAX_CONCURRENT_RUNS`` are active. Woken when a run is queued and when one gives
its slot back; it reads the queue from the store each time, so nothing is lost to a race."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from agentfarm import tasks
from agentfarm.domain import models
from agentfarm.store import Store

Launch = Callable[[models.Run], Coroutine[Any, Any, None]]


class Dispatcher:
    def __init__(
        self, store: Store, limit: int, launch: Launch, into: set[asyncio.Task[Any]]
    ) -> None:
        self.store = store
        self.limit = limit
        self.launch = launch
        self.tasks = into
        #: Runs with a task of their own (launching, reattaching or followed).
        self.active: set[str] = set()
        #: Queued runs not to launch yet (their credentials wait for a usage limit to reset).
        self.hold: Callable[[models.Run], bool] = lambda _run: False
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    def release(self, run_id: str) -> None:
        """The run's task is over: its slot is free."""
        self.active.discard(run_id)
        self.wake()

    async def run_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            free = self.limit - len(self.active)
            if free <= 0:
                continue
            queued = [
                r
                for r in await self.store.active_runs()
                if r.status == models.RunStatus.queued and r.id not in self.active
                and not self.hold(r)
            ]  # fmt: skip
            for run in queued[:free]:
                self.active.add(run.id)
                tasks.spawn(self.launch(run), name=f"run-{run.id}", into=self.tasks)
