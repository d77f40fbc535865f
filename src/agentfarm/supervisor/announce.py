"""What the supervisor tells the notification targets, and when: a run ended, parked at the
model's usage limit, resumed; a day or month budget reached (once per budget and period, not
once per run it holds, and not again after a restart: the store's flags remember it).

Every message goes through ``notify.Notifier.notify``, which only starts a background send: a
slow or failing notifier never holds up or changes a run. A failure to build a message is
logged and swallowed here for the same reason.
"""

from __future__ import annotations

import logging
from datetime import datetime

from agentfarm.domain import models
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.pipeline import PipelineStore
from agentfarm.supervisor import budgets, notify, parking

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, settings: Settings, store: Store, notifier: notify.Notifier) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.flags = PipelineStore(store.database)  # its farm-wide flags table
        #: Budgets already told, with when they reset: (scope, period) -> reset time.
        self._told: dict[tuple[str, str], datetime] = {}

    async def _send(self, what: str, note: notify.Notification | None) -> None:
        try:
            if note is not None:
                await self.notifier.notify(note)
        except Exception:
            log.warning("could not send the notification that %s", what, exc_info=True)

    async def ended(self, run_id: str) -> None:
        """A run ended; one stopped by its own budget is also a budget reached."""
        try:
            run = await self.store.get_run(run_id)
            note = notify.for_run(self.settings, run)
            budget = notify.for_own_budget(self.settings, run)
        except Exception:
            log.warning("run %s: could not build its notification", run_id, exc_info=True)
            return
        await self._send(f"run {run_id} ended", note)
        await self._send(f"run {run_id} was stopped by its budget", budget)

    async def parked(self, run_id: str) -> None:
        """A run parked at the model's usage limit (a stall's resume is not a park to tell)."""
        try:
            run = await self.store.get_run(run_id)
        except Exception:
            log.warning("run %s: could not build its notification", run_id, exc_info=True)
            return
        if run.status == models.RunStatus.parked and run.continuation.reason == parking.USAGE_LIMIT:
            await self._send(f"run {run_id} parked", notify.for_park(self.settings, run))

    async def resumed(self, run: models.Run, *, by_person: bool) -> None:
        await self._send(
            f"run {run.id} resumed", notify.for_resume(self.settings, run, by_person=by_person)
        )

    async def budget(self, reached: budgets.Reached, config: models.AgentConfig | None) -> None:
        """A day or month budget is reached: told once until it resets."""
        now = models.utcnow()
        for key, resets in list(self._told.items()):
            if resets <= now:
                del self._told[key]
        key = (reached.scope, reached.period)
        if key in self._told:
            return
        self._told[key] = reached.resets_at
        # Remembered in the store too, so that a restart does not tell it again.
        flag, value = f"notified.budget:{reached.scope}:{reached.period}", reached.resets_at
        try:
            if await self.flags.get_flag(flag) == value.isoformat():
                return
            await self.flags.set_flag(flag, value.isoformat())
        except Exception:  # told at most once more; never in the way of the queue
            log.warning("could not read or record a budget's notification", exc_info=True)
        note = notify.for_budget(self.settings, reached.sentence, config=config)
        await self._send(f"the {reached.scope} {reached.period} budget was reached", note)
