"""The attempt state machine: level-triggered, as a Kubernetes controller is.

A trigger (a delivery, a poll) only says "look at issue N again": :meth:`Reconciler.observe`
compares what the forge shows with what was recorded and at most records a new attempt.
:meth:`Reconciler.step` then moves one attempt on by one side effect at a time. Each step
records its intent (``state`` and ``steps``) before the side effect and its result after, and
every side effect looks before it creates (the comment by its marker, the pull request by its
head, a run by the id chosen for it), so a restart at any point resumes without doing anything
twice.

Keys of ``Attempt.steps`` starting with ``_`` are the machine's own notes, not checklist items:
``_permitted`` (the label's applier may write), ``_submitting`` (the id of the run being
submitted), ``_outcome`` (the terminal state decided, being reported before it is entered).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Literal

from agentfarm.domain import errors, models
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import blocked, finish, report, runspec, text
from agentfarm.pipeline.forges import errors as forge_errors
from agentfarm.pipeline.forges import types
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.pipeline import PipelineStore
from agentfarm.supervisor import notify
from agentfarm.supervisor.runs import Supervisor

log = logging.getLogger(__name__)

State = domain.AttemptState
DEFAULT_CONFIG = "issue-implementer"
#: States in which an attempt holds its repository's lock.
HOLDING = frozenset({State.running, State.finishing, State.opening_pr})
#: How a reason for waiting on another issue starts.
BLOCKED = "Blocked by"


def now_iso() -> str:
    return models.utcnow().isoformat()


@dataclass(frozen=True)
class Look:
    """A trigger: look at this issue again. ``actor`` is the label's applier on a label
    delivery; ``issue`` is what a poll already fetched."""

    forge_id: str
    repo: str
    number: int
    source: Literal["labeled", "unlabeled", "poll"]
    actor: str = ""
    delivery_id: str = ""
    issue: types.Issue | None = None


@dataclass
class Reconciler:
    settings: Settings
    store: Store
    pstore: PipelineStore
    supervisor: Supervisor
    #: Attempts asked to stop (by their id), with the reason to give.
    stops: dict[str, str] = field(default_factory=dict)

    # --- observing -----------------------------------------------------------------------
    async def observe(self, forge: domain.Forge, client: types.ForgeClient, look: Look) -> None:
        issue = look.issue or await client.get_issue(look.repo, look.number)
        await self._look(forge, client, look, issue)
        # Recorded once the look is made (its pending copy goes with it): a restart before
        # makes it again from the same "before", and finds the attempt it may have recorded.
        seen = domain.TrackedIssue(
            forge_id=forge.id,
            repo=look.repo,
            number=look.number,
            title=text.one_line(issue.title, 300),
            state=issue.state,
            labels=list(issue.labels),
        )
        await self.pstore.track_issue(seen, done=look.delivery_id)

    async def _look(
        self, forge: domain.Forge, client: types.ForgeClient, look: Look, issue: types.Issue
    ) -> None:
        before = await self.pstore.get_tracked_issue(forge.id, look.repo, look.number)
        # An unlabel delivery is itself a fact: the label was off at some point.
        was_labeled = before is not None and forge.label in before.labels
        was_labeled = was_labeled and look.source != "unlabeled"
        labeled = forge.label in issue.labels and issue.state == "open"
        repo, number = look.repo, look.number
        active = await self.pstore.list_attempts(
            forge_id=forge.id, repo=repo, number=number, active=True
        )
        if not labeled:
            for attempt in active:
                if attempt.kind == domain.AttemptKind.issue and forge.stop_on_unlabel:
                    why = "closed" if issue.state != "open" else "unlabeled"
                    self.stops.setdefault(attempt.id, f"The issue was {why}, so it was stopped.")
            return
        if active:
            return
        last = await self.pstore.list_attempts(forge_id=forge.id, repo=repo, number=number, limit=1)
        if last and was_labeled:
            return  # labeled all along since the last attempt: nothing new was asked
        # GitHub names the label's applier in its delivery; Forgejo's label_updated names
        # whoever changed some label, so its timeline is asked instead.
        actor = look.actor if look.source == "labeled" and forge.kind == "github" else ""
        if not actor:
            actor = await client.label_applied_by(look.repo, look.number, forge.label) or ""
        attempt = domain.Attempt(
            forge_id=forge.id,
            repo=repo,
            number=number,
            seq=await self.pstore.next_seq(forge.id, look.repo, look.number),
            actor=actor,
            delivery_id=look.delivery_id,
            title=text.one_line(issue.title, 300),
            body=text.clean(issue.body),
            clone_url=runspec.clone_url(forge, look.repo),
        )
        try:
            await self.pstore.create_attempt(attempt)
        except errors.ConflictError:
            return  # another trigger recorded it first
        log.info(
            "forge %s: %s#%d attempt %s recorded", forge.name, look.repo, look.number, attempt.id
        )

    # --- stepping ------------------------------------------------------------------------
    async def step(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt, paused: bool
    ) -> domain.Attempt:
        """Move the attempt on by what can be done now; returns it as saved."""
        if "_outcome" in attempt.steps:
            return await self._report(forge, client, attempt)
        if attempt.id in self.stops:
            return await self._stop(forge, client, attempt, self.stops[attempt.id])
        if attempt.state in (State.pending, State.waiting):
            return await self._dispatch(forge, client, attempt, paused)
        if attempt.state == State.running:
            return await self._watch(forge, client, attempt)
        if attempt.state == State.finishing:
            return await self._finishing(forge, client, attempt)
        if attempt.state == State.opening_pr:
            return await self._open_pull(forge, client, attempt)
        return attempt

    async def conclude(
        self,
        forge: domain.Forge,
        client: types.ForgeClient,
        attempt: domain.Attempt,
        state: domain.AttemptState,
        reason: str,
    ) -> domain.Attempt:
        """Decide the end (recorded first), report it on the issue, then enter it."""
        attempt.reason = reason
        attempt.steps["_outcome"] = state.value
        attempt.steps[state.value] = now_iso()
        attempt = await self.pstore.save_attempt(attempt)
        return await self._report(forge, client, attempt)

    async def _report(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt
    ) -> domain.Attempt:
        final = State(attempt.steps["_outcome"])
        cost = None
        if attempt.run_id is not None:
            cost = (await self.store.get_run(attempt.run_id)).cost_usd
        attempt.comment_id = await report.post_status(
            client, forge, attempt, self.settings, shown=final, cost_usd=cost
        )
        attempt = await self.pstore.save_attempt(attempt)
        if "queued" in attempt.steps:  # it got as far as showing a state label
            await report.set_state_label(client, forge, attempt, final)
        attempt.state = final
        del attempt.steps["_outcome"]
        log.info("attempt %s %s: %s", attempt.id, final.value, attempt.reason[:200])
        return await self.pstore.save_attempt(attempt)

    async def _stop(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt, why: str
    ) -> domain.Attempt:
        if attempt.run_id is not None:
            with contextlib.suppress(errors.ConflictError):  # it has ended already
                await self.supervisor.stop_run(attempt.run_id)
        self.stops.pop(attempt.id, None)
        return await self.conclude(forge, client, attempt, State.stopped, why)

    async def _dispatch(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt, paused: bool
    ) -> domain.Attempt:
        if attempt.repo not in forge.repos:  # taken off the allow-list: do nothing there
            attempt.state = State.ignored
            attempt.reason = f"{attempt.repo} is no longer on forge {forge.name!r}'s allow-list."
            return await self.pstore.save_attempt(attempt)
        if "_permitted" not in attempt.steps:
            if attempt.kind == domain.AttemptKind.issue and not (
                attempt.actor and await client.may_write(attempt.repo, attempt.actor)
            ):
                who = f"@{attempt.actor}" if attempt.actor else "an unknown user"
                return await self.conclude(
                    forge,
                    client,
                    attempt,
                    State.ignored,
                    (
                        f"The `{forge.label}` label was applied by {who}, who cannot write to "
                        f"{attempt.repo}, so agentfarm ignored it. Someone with write access can "
                        "remove the label and apply it again."
                    ),
                )
            attempt.steps["_permitted"] = now_iso()
            attempt = await self.pstore.save_attempt(attempt)
        if paused and "_submitting" not in attempt.steps:
            return await self._wait(
                forge, client, attempt, "Dispatching is paused (the kill switch)."
            )
        reason = await self._held(forge, client, attempt)
        if reason:
            return await self._wait(forge, client, attempt, reason)
        if "queued" not in attempt.steps or attempt.comment_id is None:
            attempt.steps.setdefault("queued", now_iso())
            attempt.reason = ""
            attempt = await self.pstore.save_attempt(attempt)
            attempt = await self._show(forge, client, attempt)
            await report.set_state_label(client, forge, attempt, None)
        return await self._submit(forge, client, attempt)

    async def _held(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt
    ) -> str:
        """Why the attempt must wait (empty: it may run now)."""
        if "_submitting" in attempt.steps:
            return ""
        others = await self.pstore.list_attempts(forge_id=forge.id, repo=attempt.repo, active=True)
        for other in others:
            if other.id != attempt.id and (other.state in HOLDING or "_submitting" in other.steps):
                return f"Another attempt is working on {attempt.repo} (#{other.number})."
        for number in blocked.blocked_by(attempt.body):
            if number == attempt.number:
                continue
            try:
                issue = await client.get_issue(attempt.repo, number)
            except forge_errors.ForgeNotFoundError:
                return (
                    f"{BLOCKED} #{number}, which the forge cannot find: fix the `Blocked by` "
                    "line in the issue, then retry."
                )
            if issue.state != "closed":
                return f"{BLOCKED} #{number}, which is still open."
        return ""

    async def _wait(
        self,
        forge: domain.Forge,
        client: types.ForgeClient,
        attempt: domain.Attempt,
        reason: str,
    ) -> domain.Attempt:
        if attempt.state == State.waiting and attempt.reason == reason:
            return attempt
        attempt.state, attempt.reason = State.waiting, reason
        attempt = await self.pstore.save_attempt(attempt)
        if attempt.comment_id is not None:  # shown already: say why it waits
            attempt = await self._show(forge, client, attempt)
        return attempt

    async def _show(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt
    ) -> domain.Attempt:
        comment_id = await report.post_status(client, forge, attempt, self.settings)
        if comment_id != attempt.comment_id:
            attempt.comment_id = comment_id
            attempt = await self.pstore.save_attempt(attempt)
        return attempt

    async def _submit(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt
    ) -> domain.Attempt:
        run_id = attempt.steps.get("_submitting")
        if run_id:
            try:  # submitted before a restart: adopt it, never submit twice
                run = await self.store.get_run(run_id)
                return await self._running(forge, client, attempt, run)
            except errors.NotFoundError:
                pass
        config = await self._config(forge)
        if not attempt.base_branch:
            attempt.base_branch = (await client.get_repo(attempt.repo)).default_branch
        if not attempt.branch:
            attempt.branch = await runspec.new_branch(self.pstore, client, forge, attempt)
        spec = runspec.spec(forge, attempt, config)
        # The run's id is chosen and recorded first: a restart finds the run by it.
        attempt.steps["_submitting"] = run_id or models.new_id()
        attempt = await self.pstore.save_attempt(attempt)
        run = await self.supervisor.submit(
            spec,
            config,
            branch=attempt.branch,
            run_id=attempt.steps["_submitting"],
            origin="pipeline",
        )
        return await self._running(forge, client, attempt, run)

    async def _running(
        self,
        forge: domain.Forge,
        client: types.ForgeClient,
        attempt: domain.Attempt,
        run: models.Run,
    ) -> domain.Attempt:
        attempt.run_id = run.id
        attempt.state, attempt.reason = State.running, ""
        attempt.steps.pop("_submitting", None)
        attempt.steps.setdefault("running", now_iso())
        attempt = await self.pstore.save_attempt(attempt)
        return await self._show(forge, client, attempt)

    async def _config(self, forge: domain.Forge) -> models.AgentConfig:
        name = forge.config or DEFAULT_CONFIG
        try:
            return await self.store.get_config(name)
        except errors.NotFoundError:
            raise errors.ConfigurationError(
                f"the config {name!r} that forge {forge.name!r} runs with does not exist: "
                "create it (its prompt holds the standing instructions) or set the forge's config"
            ) from None

    async def _watch(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt
    ) -> domain.Attempt:
        if attempt.run_id is None:  # cannot happen; recover by submitting again
            attempt.state = State.pending
            return await self.pstore.save_attempt(attempt)
        run = await self.store.get_run(attempt.run_id)
        if not run.status.terminal:
            return attempt
        attempt.state = State.finishing
        attempt = await self.pstore.save_attempt(attempt)
        return await self._finishing(forge, client, attempt)

    async def _finishing(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt
    ) -> domain.Attempt:
        assert attempt.run_id is not None
        outcome = await finish.read_outcome(self.store, await self.store.get_run(attempt.run_id))
        if outcome.pushed:
            attempt.steps.setdefault("pushed", now_iso())
            attempt.head_sha = outcome.head
        failed = finish.failure(attempt, outcome)
        if failed is not None:
            return await self.conclude(forge, client, attempt, State.failed, failed)
        attempt.state = State.opening_pr
        attempt = await self.pstore.save_attempt(attempt)
        attempt = await self._show(forge, client, attempt)  # pushed
        return await self._open_pull(forge, client, attempt)

    async def _open_pull(
        self, forge: domain.Forge, client: types.ForgeClient, attempt: domain.Attempt
    ) -> domain.Attempt:
        pull = await client.find_open_pull(attempt.repo, attempt.branch)
        if pull is None:
            assert attempt.run_id is not None
            run = await self.store.get_run(attempt.run_id)
            outcome = await finish.read_outcome(self.store, run)
            base = attempt.base_branch
            if attempt.kind != domain.AttemptKind.issue:  # its base is the pull's own branch
                base = (await client.get_repo(attempt.repo)).default_branch
            pull = await client.open_pull(
                attempt.repo,
                title=finish.pull_title(attempt),
                head=attempt.branch,
                base=base,
                body=finish.pull_body(
                    attempt, forge, outcome, report.run_url(self.settings, run.id)
                ),
                draft=forge.draft,
            )
            await self.supervisor.notifier.notify(
                notify.for_pull_request(
                    self.settings,
                    forge=forge.name,
                    repo=attempt.repo,
                    number=attempt.number,
                    pr_number=pull.number,
                    pr_url=pull.url,
                    run_id=run.id,
                )
            )
        attempt.pr_number, attempt.pr_url = pull.number, pull.url
        attempt.steps.setdefault("pull_request", now_iso())
        return await self.conclude(forge, client, attempt, State.done, "")
