"""The pipeline service: webhook deliveries and polls in, attempts stepped in one loop.

Every change to an attempt happens in one task (:meth:`Pipeline.tick`), so two triggers never
race over the same record; a delivery is checked, deduplicated and queued, and the request
answers at once. See :mod:`.reconcile` for the state machine itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from agentfarm import tasks
from agentfarm.domain import errors
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import followups, poll, reconcile
from agentfarm.pipeline.forges import errors as forge_errors
from agentfarm.pipeline.forges import make_client, types, webhooks
from agentfarm.pipeline.forges.http import Token
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.pipeline import PipelineStore
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import credentials
from agentfarm.supervisor.runs import Supervisor

log = logging.getLogger(__name__)

PAUSED_FLAG = "pipeline.paused"
DeliveryStatus = Literal["accepted", "duplicate", "ignored"]
ClientFactory = Callable[[domain.Forge], types.ForgeClient]
#: The loop looks at every active attempt at least this often (runs ending, Blocked-by).
TICK_SECONDS = 5.0
#: Backoff for a step that failed in a way not meant to be retried soon.
SLOW_RETRY = 60.0
MAX_BACKOFF = 600.0


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        pipeline_store: PipelineStore,
        secrets: SecretStore,
        supervisor: Supervisor,
        *,
        client_factory: ClientFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pstore = pipeline_store
        self.secrets = secrets
        self.supervisor = supervisor
        self.clock = clock
        self._factory = client_factory
        self._clients: dict[str, tuple[str, types.ForgeClient]] = {}
        self.reconciler = reconcile.Reconciler(settings, store, pipeline_store, supervisor)
        self._looks: list[tuple[float, reconcile.Look]] = []
        self._followups: list[tuple[float, str, webhooks.Trigger]] = []
        #: Attempt id -> (monotonic time before which it is not stepped, failures so far).
        self._backoff: dict[str, tuple[float, int]] = {}
        self._watched: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.poller = poll.Poller(self)

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Resume every active attempt where it stopped, and start the pollers."""
        for forge_id, pending in await self.pstore.pending_looks():  # answered, not made
            self._looks.append((0.0, _look(forge_id, pending)))
        for forge_id, kept in await self.pstore.pending_followups():  # answered, not decided
            try:
                self._followups.append((0.0, forge_id, webhooks.load_trigger(kept)))
            except ValueError as exc:
                log.warning("pipeline: a kept follow-up request cannot be read: %s", exc)
        for attempt in await self.pstore.list_attempts(active=True, limit=10_000):
            if attempt.kind == domain.AttemptKind.issue:  # still labeled? (stop on unlabel)
                look = reconcile.Look(attempt.forge_id, attempt.repo, attempt.number, "poll")
                self._looks.append((0.0, look))
        tasks.spawn(self._loop(), name="pipeline", into=self._tasks)
        tasks.spawn(self.poller.run_forever(), name="pipeline-poll", into=self._tasks)
        self.wake()

    async def close(self) -> None:
        await tasks.stop(list(self._tasks))
        for _, client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=TICK_SECONDS)
            self._wake.clear()
            try:
                await self.tick()
            except Exception:  # one bad pass must not end the loop
                log.exception("pipeline: a pass failed; the next one retries")

    # --- kill switch ---------------------------------------------------------------------
    async def paused(self) -> bool:
        # Any value is "paused" (a note of who paused may be stored); no flag is running.
        return await self.pstore.get_flag(PAUSED_FLAG) is not None

    async def set_paused(self, paused: bool) -> None:
        await self.pstore.set_flag(PAUSED_FLAG, "1" if paused else None)
        log.warning("pipeline: dispatching %s", "paused" if paused else "resumed")
        self.wake()

    # --- deliveries ----------------------------------------------------------------------
    async def handle_delivery(
        self, forge_name: str, headers: Mapping[str, str], body: bytes
    ) -> DeliveryStatus:
        """Check, deduplicate and queue a webhook delivery: ``accepted``, ``duplicate`` or
        ``ignored``. UnauthorizedError for a missing or wrong signature (nothing is done);
        InvalidDeliveryError for a signed body we cannot read."""
        forge = await self.pstore.get_forge(forge_name)
        secret = await asyncio.to_thread(self.secrets.get, forge.webhook_secret_name)
        if not secret or not webhooks.verify_signature(forge.kind, secret, body, headers):
            log.warning("forge %s: a delivery with a missing or wrong signature", forge.name)
            raise errors.UnauthorizedError(
                "the delivery's signature is missing or wrong: set the webhook's secret to the "
                f"one agentfarm gave for forge {forge.name!r} (rotate it with the forge admin)"
            )
        trigger = webhooks.parse_delivery(forge.kind, headers, body, trigger_label=forge.label)
        delivery = webhooks.delivery_id(forge.kind, headers)
        pending = None
        allowed = trigger is not None and trigger.repo in forge.repos
        if allowed and trigger and trigger.kind in ("labeled", "unlabeled") and trigger.number:
            pending = domain.PendingLook(
                repo=trigger.repo,
                number=trigger.number,
                source=trigger.kind,
                actor=trigger.actor,
                delivery_id=trigger.delivery_id,
            )
        # A follow-up request may need the forge (or wait behind a run): it is kept too.
        kept = None
        if trigger is not None and followups.asks(forge, trigger):
            kept = webhooks.dump_trigger(trigger)
        # The look is stored with the delivery's id before the answer (made after a restart).
        if not await self.pstore.record_delivery(forge.id, delivery, pending, kept):
            return "duplicate"
        if trigger is None:
            return "ignored"
        if trigger.repo not in forge.repos:
            log.info("forge %s: %s is not allow-listed; delivery ignored", forge.name, trigger.repo)
            return "ignored"
        if pending is not None:
            self.enqueue(_look(forge.id, pending))
        elif (trigger.kind == "comment" and trigger.is_pull) or trigger.kind == "status":
            self._followups.append((0.0, forge.id, trigger))
            self.wake()
        else:
            return "ignored"
        return "accepted"

    def enqueue(self, look: reconcile.Look, *, not_before: float = 0.0) -> None:
        self._looks.append((not_before, look))
        self.wake()

    # --- operations ----------------------------------------------------------------------
    async def retry(self, attempt_id: str) -> domain.Attempt:
        """A new attempt (next seq) at an ended one's issue; an issue attempt gets a new
        branch, a follow-up continues its pull request's branch."""
        old = await self.pstore.get_attempt(attempt_id)
        if old.active:
            raise errors.ConflictError(
                f"attempt {attempt_id} is still {old.state.value}: stop it first, then retry"
            )
        followup = old.kind != domain.AttemptKind.issue
        new = domain.Attempt(
            forge_id=old.forge_id,
            repo=old.repo,
            number=old.number,
            kind=old.kind,
            seq=await self.pstore.next_seq(old.forge_id, old.repo, old.number),
            actor=old.actor,
            title=old.title,
            body=old.body,
            request=old.request,
            branch=old.branch if followup else "",
            base_branch=old.base_branch if followup else "",
            clone_url=old.clone_url,
            pr_number=old.pr_number if followup else None,
            pr_url=old.pr_url if followup else "",
            parent_id=old.parent_id,
            # Asked for by an operator of this server: no label to check the applier of.
            steps={"_permitted": reconcile.now_iso()},
        )
        try:
            await self.pstore.create_attempt(new)
        except errors.ConflictError:
            raise errors.ConflictError(
                f"issue {old.repo}#{old.number} already has an active attempt: stop it first"
            ) from None
        self.wake()
        return new

    async def stop_attempt(self, attempt_id: str) -> domain.Attempt:
        """Ask the loop to stop an active attempt (and its run); it is ``stopped`` shortly."""
        attempt = await self.pstore.get_attempt(attempt_id)
        if not attempt.active:
            raise errors.ConflictError(
                f"attempt {attempt_id} has already ended ({attempt.state.value})"
            )
        self.reconciler.stops.setdefault(attempt_id, "Stopped from agentfarm's cockpit.")
        self.wake()
        return attempt

    # --- the loop's one pass -------------------------------------------------------------
    async def tick(self) -> None:
        """Handle the queued triggers, then step every active attempt, oldest first."""
        now = self.clock()
        looks, self._looks = self._looks, []
        for when, look in looks:
            if when > now:
                self._looks.append((when, look))
                continue
            await self._observe(look)
        followed, self._followups = self._followups, []
        for when, forge_id, trigger in followed:
            if when > now:
                self._followups.append((when, forge_id, trigger))
                continue
            await self._followup(forge_id, trigger)
        paused = await self.paused()
        for attempt in reversed(await self.pstore.list_attempts(active=True, limit=10_000)):
            until, _ = self._backoff.get(attempt.id, (0.0, 0))
            if until <= now:
                await self._step(attempt, paused)

    async def _observe(self, look: reconcile.Look) -> None:
        try:
            forge = await self.pstore.get_forge(look.forge_id)
            await self.reconciler.observe(forge, await self.client(forge), look)
        except errors.NotFoundError:
            log.info("pipeline: forge %s is gone; trigger dropped", look.forge_id)
        except forge_errors.TemporaryForgeError as exc:
            log.warning("pipeline: looking at %s#%d: %s", look.repo, look.number, exc)
            self.enqueue(look, not_before=self.clock() + max(exc.delay, 5.0))
        except forge_errors.PermanentForgeError as exc:
            log.warning("pipeline: looking at %s#%d: %s; dropped", look.repo, look.number, exc)
        except Exception:
            log.exception("pipeline: looking at %s#%d failed", look.repo, look.number)

    async def _followup(self, forge_id: str, trigger: webhooks.Trigger) -> None:
        try:
            forge = await self.pstore.get_forge(forge_id)
            client = await self.client(forge)
            if trigger.kind == "comment":
                await followups.followup_for_comment(self.pstore, client, forge, trigger)
            else:
                await followups.followup_for_status(
                    self.pstore, client, forge, trigger.repo, trigger.sha
                )
        except forge_errors.TemporaryForgeError as exc:
            log.warning("pipeline: follow-up on %s: %s", trigger.repo, exc)
            when = self.clock() + max(exc.delay, 5.0)
            self._followups.append((when, forge_id, trigger))
            return
        except errors.NotFoundError:
            pass
        except Exception:
            log.exception("pipeline: a follow-up on %s failed", trigger.repo)
        if trigger.kind == "comment":  # started or turned down: not again after a restart
            await self.pstore.followup_decided(forge_id, trigger.delivery_id)

    async def _step(self, attempt: domain.Attempt, paused: bool) -> None:
        try:
            forge = await self.pstore.get_forge(attempt.forge_id)
        except errors.NotFoundError:
            attempt.state, attempt.reason = domain.AttemptState.failed, "Its forge was removed."
            await self.pstore.save_attempt(attempt)
            return
        try:
            client = await self.client(forge)
            saved = await self.reconciler.step(forge, client, attempt, paused)
        except forge_errors.TemporaryForgeError as exc:
            self._defer(attempt, exc.delay, str(exc))
            return
        except forge_errors.PermanentForgeError as exc:
            await self._fail(forge, client, attempt, exc)
            return
        except errors.AgentfarmError as exc:  # a config gone, a secret missing, ...
            self._defer(attempt, SLOW_RETRY, str(exc))
            await self._held_by(attempt.id, f"Held: {exc}")
            return
        except Exception:  # a bug: keep it to this attempt, the others go on
            log.exception("attempt %s: a step failed", attempt.id)
            self._defer(attempt, SLOW_RETRY, "an internal error (see the log above)")
            return
        self._backoff.pop(attempt.id, None)
        if saved.state == domain.AttemptState.waiting and saved.reason.startswith(
            reconcile.BLOCKED
        ):
            self._backoff[attempt.id] = (
                self.clock() + self.settings.pipeline_blocked_recheck_seconds,
                0,
            )
        if saved.state == domain.AttemptState.running and saved.run_id:
            self._watch(saved.run_id)

    async def _held_by(self, attempt_id: str, reason: str) -> None:
        """Show in the attempt (for the cockpit) why it is not moving; the issue is not told,
        the operator is who can fix it."""
        current = await self.pstore.get_attempt(attempt_id)
        if current.active and current.reason != reason:
            current.reason = reason[:500]
            await self.pstore.save_attempt(current)

    def _defer(self, attempt: domain.Attempt, delay: float, why: str) -> None:
        _, failures = self._backoff.get(attempt.id, (0.0, 0))
        wait = min(MAX_BACKOFF, max(delay, 2.0 * 2**failures))
        self._backoff[attempt.id] = (self.clock() + wait, failures + 1)
        log.warning("attempt %s: %s; trying again in %.0fs", attempt.id, why, wait)

    async def _fail(
        self,
        forge: domain.Forge,
        client: types.ForgeClient,
        attempt: domain.Attempt,
        exc: forge_errors.PermanentForgeError,
    ) -> None:
        current = await self.pstore.get_attempt(attempt.id)
        reason = f"The forge refused a request, so the attempt failed: {exc}"
        if current.steps.get("_outcome"):  # reporting itself failed: end it, unreported
            current.state = domain.AttemptState(current.steps.pop("_outcome"))
            await self.pstore.save_attempt(current)
            log.error("attempt %s: could not report on the issue: %s", attempt.id, exc)
            return
        try:
            await self.reconciler.conclude(
                forge, client, current, domain.AttemptState.failed, reason
            )
        except forge_errors.TemporaryForgeError as again:
            self._defer(current, again.delay, str(again))
        except forge_errors.PermanentForgeError as again:
            await self._fail(forge, client, current, again)

    def _watch(self, run_id: str) -> None:
        """Wake the loop the moment a run ends, instead of at the next tick."""
        if run_id in self._watched:
            return
        self._watched.add(run_id)

        async def watch() -> None:
            try:
                async for _ in self.supervisor.hub.follow(run_id):
                    pass
            finally:
                self._watched.discard(run_id)
                self.wake()

        tasks.spawn(watch(), name=f"pipeline-watch-{run_id}", into=self._tasks)

    # --- forge clients -------------------------------------------------------------------
    async def client(self, forge: domain.Forge) -> types.ForgeClient:
        """One client per forge, made anew when the forge's settings or its token change (a
        token rotated with `agentfarm secret set` is used from the next call on)."""
        if self._factory is not None:
            return self._cached(forge, forge.updated_at.isoformat(), self._factory)
        stored = await asyncio.to_thread(self.secrets.all)  # off the loop
        token = credentials.named_token(self.settings, stored, forge.token_secret)
        if not token:
            raise errors.ConfigurationError(
                f"forge {forge.name!r}: the secret {forge.token_secret!r} holding its token is "
                "not set: store it with `agentfarm secret set` (or on the forge's page, or in the "
                "server's environment as GITHUB_TOKEN/FORGEJO_TOKEN)"
            )
        digest = hashlib.sha256(token.encode()).hexdigest()[:16]
        version = f"{forge.updated_at.isoformat()}/{digest}"
        return self._cached(forge, version, lambda f: make_client(f.kind, f.base_url, Token(token)))

    def _cached(self, forge: domain.Forge, version: str, make: ClientFactory) -> types.ForgeClient:
        cached = self._clients.get(forge.id)
        if cached is not None and cached[0] == version:
            return cached[1]
        client = make(forge)
        if cached is not None:
            tasks.spawn(cached[1].aclose(), name=f"close-{forge.id}", into=self._tasks)
        self._clients[forge.id] = (version, client)
        return client


def _look(forge_id: str, p: domain.PendingLook) -> reconcile.Look:
    return reconcile.Look(forge_id, p.repo, p.number, p.source, p.actor, p.delivery_id)
