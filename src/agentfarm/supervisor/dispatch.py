"""The dispatcher: queued runs are launched in the queue's order while its caps and budgets
allow (``queue.plan``, through the fleet). Woken when a run is queued, when one gives its slot
back and when budgets are checked; it reads the queue from the store each time, so nothing is
lost to a race."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any

from agentfarm import tasks
from agentfarm.domain import models
from agentfarm.supervisor import queue

Launch = Callable[[models.Run], Coroutine[Any, Any, None]]
#: The queue's plan, given the runs the dispatcher has taken.
Planner = Callable[[Collection[str]], Awaitable[queue.Plan]]


class Dispatcher:
    def __init__(self, plan: Planner, launch: Launch, into: set[asyncio.Task[Any]]) -> None:
        self.plan = plan
        self.launch = launch
        self.tasks = into
        #: Runs with a task of their own (launching, reattaching or followed).
        self.active: set[str] = set()
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
            for run in (await self.plan(set(self.active))).start:
                if run.id in self.active:
                    continue
                self.active.add(run.id)
                tasks.spawn(self.launch(run), name=f"run-{run.id}", into=self.tasks)
