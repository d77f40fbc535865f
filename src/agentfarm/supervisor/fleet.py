"""The fleet's limits around the supervisor: admission (the queue's length, budgets that refuse
launches), the queue's plan (caps and budgets that hold queued runs), the wall-clock budget of
each run, and the periodic check of day and month budgets.

The supervisor owns runs; this module decides, and asks the supervisor to stop a run through
its one stop path (``Stop``) when a budget says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from agentfarm import tasks
from agentfarm.domain import errors, models
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.stats import RunStats
from agentfarm.supervisor import budgets, queue

log = logging.getLogger(__name__)

#: ``stop(run_id, reason)``: the supervisor's stop, with the reason the run ends with.
Stop = Callable[[str, str], Awaitable[None]]


class Fleet:
    def __init__(self, settings: Settings, store: Store, stop: Stop) -> None:
        self.settings = settings
        self.store = store
        self.stats = RunStats(store.database)
        self.budgets = budgets.Budgets(settings, self.stats)
        self.caps = queue.Caps.of(settings)
        self._stop = stop
        #: What holds a single queued run, if anything (the supervisor's usage-limit parking).
        self.held: Callable[[models.Run], str | None] = lambda _run: None

    # --- admission -------------------------------------------------------------------------
    async def admit(self, config: models.AgentConfig | None) -> None:
        """Refuse a launch (429), when so configured, while a budget it falls under is
        reached."""
        await self.budgets.admit(config)

    async def enqueue(self, run: models.Run) -> None:
        """Store the queued ``run``, or refuse it (429) when the queue is full. Nothing
        running (or queued) is touched to make room."""
        limit = self.settings.max_queued_runs
        count = await self.stats.create_queued(run, limit=limit)
        if count is not None:
            raise errors.LimitReachedError(
                f"the queue is full: {count} runs wait in `queued` and the limit is {limit} "
                "(AGENTFARM_MAX_QUEUED_RUNS); launch again once some have started, or stop "
                "queued runs you no longer need",
                code="queue_full",
                limit=limit,
                count=count,
            )

    # --- the queue -------------------------------------------------------------------------
    async def plan(self, launching: Collection[str]) -> queue.Plan:
        """The queue as it stands: what may start now, every queued run's place.
        ``launching``: runs the dispatcher has taken (their status may still say queued)."""
        # The dispatcher wakes on every run that ends and every budget check: with nothing
        # queued, an indexed count spares reading (and validating) every active run.
        if await self.stats.queued_count() == 0:
            return queue.Plan()
        runs = await self.store.active_runs()
        waiting = [r for r in runs if r.status == models.RunStatus.queued]
        queued = [r for r in waiting if r.id not in launching]
        # A parked run has no agent process: it takes no slot until it resumes.
        occupying = [
            r
            for r in runs
            if r.status not in (models.RunStatus.queued, models.RunStatus.parked)
            or r.id in launching
        ]
        if not queued:
            return queue.Plan()
        configs = {c.id: c for c in await self.store.list_configs()}
        holds = await self.budgets.holds(configs.values())
        held = {r.id: why for r in queued if (why := self.held(r)) is not None}
        holds = dataclasses.replace(holds, runs=held) if held else holds
        return queue.plan(
            queued, occupying, self.caps, configs=configs, holds=holds, busy=len(launching)
        )

    # --- budgets of running runs -------------------------------------------------------------
    def watch_time(self, run: models.Run, into: set[asyncio.Task[Any]]) -> asyncio.Task[Any] | None:
        """A timer that stops ``run`` at the end of its wall-clock budget (from its start, so
        it holds across restarts); the caller cancels it when the run ends."""
        end = budgets.deadline(run)
        if end is None or run.spec.max_minutes is None:
            return None
        reason = budgets.time_over(run.spec.max_minutes)

        async def wait_then_stop() -> None:
            await asyncio.sleep(max(0.0, (end - models.utcnow()).total_seconds()))
            await self._stop(run.id, reason)

        return tasks.spawn(wait_then_stop(), name=f"time-{run.id}", into=into)

    async def check_budgets(self) -> None:
        """Look at the day and month budgets (a reached one is told to the notification
        targets) and stop running runs under a reached one, when so configured
        (``budget_reached_running = stop``)."""
        configs = await self.store.list_configs()
        # Looked at even when nothing is stopped: a reached budget is told (once) then too.
        farm, per_config = await self.budgets.reached(configs)
        if self.settings.budget_reached_running != "stop" or (farm is None and not per_config):
            return
        for run in await self.store.active_runs():
            if run.status == models.RunStatus.queued:
                continue
            found = farm or (per_config.get(run.config_id) if run.config_id else None)
            if found is not None:
                await self._stop(run.id, found.sentence)

    async def watch_forever(self, wake: Callable[[], None]) -> None:
        """Every ``budget_check_seconds``: check budgets, and wake the dispatcher (a budget
        that reset lets held runs start)."""
        while True:
            await asyncio.sleep(self.settings.budget_check_seconds)
            try:
                await self.check_budgets()
            except Exception:  # the next round tries again; the queue still wakes
                log.exception("checking the day and month budgets failed")
            wake()
