"""The polling fallback, for a control plane the forge cannot reach (behind NAT, a tailnet).

Every ``poll_seconds`` a forge's allow-listed repositories are listed for open issues with the
trigger label (the clients ask conditionally, so an unchanged list costs a 304), and each one
is queued to be looked at, as a delivery would be. Issues that had the label when last seen but
are no longer listed are looked at too: that is how a poll notices a removed label. Failing
checks on the pipeline's pull requests are polled here as well (Forgejo sends no status event).
Every forge, webhooks-only ones too, is polled once when the server starts, for the deliveries
it missed while down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import followups, reconcile
from agentfarm.pipeline.forges import errors as forge_errors

if TYPE_CHECKING:
    from agentfarm.pipeline.service import Pipeline

log = logging.getLogger(__name__)
#: How often the poller looks for a forge that is due.
GRANULARITY = 5.0


class Poller:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        #: Forge id -> monotonic time of its next poll of issues, and of checks.
        self._due: dict[str, float] = {}
        self._checks_due: dict[str, float] = {}

    async def run_forever(self) -> None:
        # Once at start, every forge (webhooks only too): labels applied while the server was
        # down were delivered to no one.
        await self.poll_due(catch_up=True)
        while True:
            await asyncio.sleep(GRANULARITY)
            await self.poll_due()

    async def poll_due(self, *, catch_up: bool = False) -> None:
        now = self.pipeline.clock()
        try:
            forges = await self.pipeline.pstore.list_forges()
        except Exception:
            log.exception("pipeline: listing the forges to poll failed")
            return
        for forge in forges:
            try:
                if catch_up or (forge.poll_seconds > 0 and self._due.get(forge.id, 0.0) <= now):
                    self._due[forge.id] = now + forge.poll_seconds
                    await self.poll(forge)
                # Forgejo sends no commit-status webhook: its checks are always polled.
                checks = forge.poll_seconds > 0 or forge.kind != "github"
                if checks and (catch_up or self._checks_due.get(forge.id, 0.0) <= now):
                    self._checks_due[forge.id] = now + max(
                        forge.poll_seconds, self.pipeline.settings.pipeline_checks_poll_seconds
                    )
                    await self.poll_checks(forge)
            except Exception:
                log.exception("forge %s: a poll failed; the next one retries", forge.name)

    async def poll(self, forge: domain.Forge) -> None:
        """List every allow-listed repository of ``forge`` once and queue what it shows."""
        client = await self.pipeline.client(forge)
        tracked = await self.pipeline.pstore.list_tracked_issues(forge.id, limit=10_000)
        for repo in forge.repos:
            try:
                issues = await client.list_labeled_issues(repo, forge.label)
            except forge_errors.ForgeError as exc:
                log.warning("forge %s: listing %s: %s", forge.name, repo, exc)
                continue
            listed = {issue.number for issue in issues}
            for issue in issues:
                self.pipeline.enqueue(
                    reconcile.Look(forge.id, repo, issue.number, "poll", issue=issue)
                )
            for seen in tracked:
                if seen.repo == repo and seen.number not in listed and forge.label in seen.labels:
                    self.pipeline.enqueue(reconcile.Look(forge.id, repo, seen.number, "poll"))

    async def poll_checks(self, forge: domain.Forge) -> None:
        """Failing checks on the pipeline's open pull requests become follow-ups."""
        client = await self.pipeline.client(forge)
        try:
            started = await followups.poll_checks(self.pipeline.pstore, client, forge)
        except forge_errors.ForgeError as exc:
            log.warning("forge %s: polling checks: %s", forge.name, exc)
            return
        if started:
            self.pipeline.wake()
