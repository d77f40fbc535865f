"""Notifications: a short message about a run (or a pull request, a budget) to Apprise URLs and
to the browsers subscribed to Web Push.

Targets: the farm-wide URLs (``AGENTFARM_NOTIFY_URLS`` and the secret ``NOTIFY_URLS``), plus
the secrets a notification names (a config's ``notify_secrets``; a forge's, when the pipeline
sends). Which kinds are sent is ``notify_events``; ``test`` always is.

A notifier never affects what it reports on: ``notify`` only starts a background task; each
send has a time limit; failures are logged with the target's scheme and host only, and
Apprise's words masked of the URL (it is a credential).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentfarm import tasks
from agentfarm.domain import models, present
from agentfarm.settings import Settings
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import apprise_targets
from agentfarm.supervisor.apprise_targets import Outcome, Target
from agentfarm.supervisor.webpush import WebPush

log = logging.getLogger(__name__)

#: The secret holding farm-wide Apprise URLs (besides ``AGENTFARM_NOTIFY_URLS``).
FARM_SECRET = "NOTIFY_URLS"  # noqa: S105 (a secret's name)
#: An error's first line is cut to this many characters in a message.
ERROR_CHARS = 200


class Kind(StrEnum):
    run_finished = "run_finished"
    run_failed = "run_failed"
    run_stopped = "run_stopped"
    run_parked = "run_parked"
    run_resumed = "run_resumed"
    budget_reached = "budget_reached"
    pull_request_opened = "pull_request_opened"
    test = "test"


#: Apprise's message type per kind (the colour or icon a service shows).
LEVELS = {
    Kind.run_finished: "success",
    Kind.run_failed: "failure",
    Kind.run_stopped: "warning",
    Kind.run_parked: "warning",
    Kind.run_resumed: "info",
    Kind.budget_reached: "warning",
    Kind.pull_request_opened: "success",
    Kind.test: "info",
}


@dataclass(frozen=True)
class Notification:
    kind: Kind
    title: str
    body: str
    #: Absolute link for Apprise targets (None without ``public_url``).
    url: str | None = None
    run_id: str | None = None
    config_name: str | None = None
    forge: str | None = None
    #: Names of stored secrets with more Apprise URLs for this notification (a config's, a
    #: forge's); the farm-wide ones are always added.
    secrets: tuple[str, ...] = ()

    def text(self) -> str:
        return f"{self.body}\n{self.url}" if self.url else self.body

    def push_payload(self) -> dict[str, Any]:
        # Same origin as the service worker: a relative link works without public_url.
        path = f"/runs/{self.run_id}" if self.run_id else "/"
        return {"title": self.title, "body": self.body, "url": path, "tag": self.run_id or ""}


def run_link(settings: Settings, run_id: str) -> str | None:
    if not settings.public_url:
        return None
    return f"{settings.public_url.rstrip('/')}/runs/{run_id}"


def _about(
    settings: Settings, run: models.Run, kind: Kind, *, title: str, body: str
) -> Notification:
    """A notification about ``run``: its link, its config and the secrets its spec names."""
    return Notification(
        kind=kind,
        title=title,
        body=body,
        url=run_link(settings, run.id),
        run_id=run.id,
        config_name=run.config_name,
        secrets=tuple(run.spec.notify_secrets),
    )


#: How the reasons of a run stopped by its own budget (``budgets``) begin.
OWN_BUDGET_REASONS = ("budget: $", "turns: ", "time: ")
#: ... and by any budget (a day or month one: ``budget: farm daily ...``).
BUDGET_REASONS = ("budget: ", "turns: ", "time: ")

_KIND_OF_STATUS = {
    models.RunStatus.succeeded: Kind.run_finished,
    models.RunStatus.failed: Kind.run_failed,
    models.RunStatus.lost: Kind.run_failed,
    models.RunStatus.stopped: Kind.run_stopped,
}


def for_run(settings: Settings, run: models.Run) -> Notification | None:
    """The message about an ended run; None for a run not ended."""
    kind = _KIND_OF_STATUS.get(run.status)
    if kind is None:
        return None
    who = run.config_name or "one-off run"
    lines = [f"{run.status.value}: {who}, agent {run.spec.agent}"]
    spent = []
    if run.cost_usd is not None:
        spent.append(present.fmt_cost(run.cost_usd, run.cost_estimated))
    if run.num_turns is not None:
        spent.append(f"{run.num_turns} turn{'s' if run.num_turns != 1 else ''}")
    if spent:
        lines.append(", ".join(spent))
    by_budget = False
    if run.error and run.status != models.RunStatus.succeeded:
        first = run.error.strip().splitlines()[0] if run.error.strip() else ""
        if first:
            cut = first if len(first) <= ERROR_CHARS else first[: ERROR_CHARS - 1] + "…"
            by_budget = run.status == models.RunStatus.stopped and first.startswith(BUDGET_REASONS)
            lines.append(f"stopped by a budget: {cut}" if by_budget else f"error: {cut}")
    return _about(
        settings,
        run,
        kind,
        title=f"agentfarm: run {run.id} {run.status.value}" + (" by a budget" if by_budget else ""),
        body="\n".join(lines),
    )


def for_own_budget(settings: Settings, run: models.Run) -> Notification | None:
    """A run stopped by its own budget is a budget reached, too (``budget_reached`` is sent by
    default, ``run_stopped`` is not); None for any other run."""
    error = (run.error or "").strip()
    if run.status != models.RunStatus.stopped or not error.startswith(OWN_BUDGET_REASONS):
        return None
    who = run.config_name or "one-off run"
    return _about(
        settings,
        run,
        Kind.budget_reached,
        title=f"agentfarm: run {run.id} stopped by its budget",
        body=f"{error.splitlines()[0][:ERROR_CHARS]}: {who}, agent {run.spec.agent} was stopped",
    )


def for_park(settings: Settings, run: models.Run) -> Notification:
    """The message when a run parks at the model's usage limit: when it resumes by itself."""
    who = run.config_name or "one-off run"
    until = run.parked_until
    when = until.strftime("%Y-%m-%d %H:%M UTC") if until else "when the limit resets"
    return _about(
        settings,
        run,
        Kind.run_parked,
        title=f"agentfarm: run {run.id} parked",
        body=f"parked: {who}, the model's usage limit was reached; it resumes by itself at "
        f"{when} (or resume it now from its page)",
    )


def for_resume(settings: Settings, run: models.Run, *, by_person: bool) -> Notification:
    """The message when a parked run goes on: at its reset, or because a person said so."""
    who = run.config_name or "one-off run"
    how = "resumed by a person" if by_person else "resumed by itself after the usage limit reset"
    return _about(
        settings,
        run,
        Kind.run_resumed,
        title=f"agentfarm: run {run.id} resumed",
        body=f"{how}: {who}, agent {run.spec.agent}",
    )


def for_budget(
    settings: Settings, sentence: str, *, config: models.AgentConfig | None = None
) -> Notification:
    """The message when a day or month budget is reached (``sentence`` says which, how much
    and when it resets); a config's budget is also told to that config's targets."""
    held = "new runs are refused" if settings.budget_reached_launch == "refuse" else (
        "new runs wait in the queue")  # fmt: skip
    running = "running ones are stopped" if settings.budget_reached_running == "stop" else (
        "running ones finish")  # fmt: skip
    return Notification(
        kind=Kind.budget_reached,
        title="agentfarm: budget reached",
        body=f"{sentence}\n{held} until then; {running}",
        url=settings.public_url.rstrip("/") + "/" if settings.public_url else None,
        config_name=config.name if config else None,
        secrets=tuple(config.notify_secrets) if config else (),
    )


def for_pull_request(
    settings: Settings,
    *,
    forge: str,
    repo: str,
    number: int,
    pr_number: int,
    pr_url: str,
    run_id: str | None = None,
    secrets: tuple[str, ...] = (),
) -> Notification:
    """The message the pipeline sends when it opened a pull request for an issue; it links to
    the pull request (the run's page is one tap away from there, and in Web Push)."""
    lines = [f"{repo}#{number}: pull request #{pr_number} opened ({forge})"]
    if run_id and settings.public_url:
        lines.append(f"run: {run_link(settings, run_id)}")
    return Notification(
        kind=Kind.pull_request_opened,
        title=f"agentfarm: pull request #{pr_number} for {repo}#{number}",
        body="\n".join(lines),
        url=pr_url,
        run_id=run_id,
        forge=forge,
        secrets=secrets,
    )


class Notifier:
    def __init__(
        self, settings: Settings, secrets: SecretStore, push: WebPush | None = None
    ) -> None:
        self.settings = settings
        self.secrets = secrets
        self.push = push
        self._tasks: set[asyncio.Task[Any]] = set()
        apprise_targets.install_masking()

    async def start(self) -> None:
        if self.push is not None:
            try:
                await self.push.start()
            except Exception:  # Web Push is off then; everything else works
                log.exception("web push: could not read or make the VAPID key; push is off")
                self.push = None

    async def close(self) -> None:
        await tasks.stop(list(self._tasks))

    def wants(self, kind: Kind) -> bool:
        return kind == Kind.test or kind.value in self.settings.notify_events

    async def notify(self, note: Notification) -> None:
        """Send ``note`` in the background (if its kind is wanted); returns at once."""
        if not self.wants(note.kind):
            return
        tasks.spawn(self.send(note), name=f"notify-{note.kind.value}", into=self._tasks)

    async def targets(self, extra: tuple[str, ...] = ()) -> list[Target]:
        """The Apprise targets for a notification naming the secrets ``extra``."""
        found: list[Target] = []
        farm = self.settings.notify_urls
        if farm is not None:
            found += [
                Target(u, "AGENTFARM_NOTIFY_URLS")
                for u in apprise_targets.split_urls(farm.get_secret_value())
            ]
        stored = await asyncio.to_thread(self.secrets.all)
        for name in (FARM_SECRET, *extra):
            if name == FARM_SECRET and name in extra:
                continue
            value = stored.get(name)
            if value is None:
                if name != FARM_SECRET:
                    log.warning("notify: no secret named %s (named by a config); skipped", name)
                continue
            found += [Target(u, name) for u in apprise_targets.split_urls(value)]
        unique: dict[str, Target] = {}
        for target in found:
            unique.setdefault(target.url, target)
        return list(unique.values())

    async def send(self, note: Notification) -> list[Outcome]:
        """Send ``note`` to every target now, each within the time limit; never raises.
        Returns how each send went (targets shown by scheme and host only)."""
        try:
            targets = await self.targets(note.secrets)
        except Exception as exc:  # a broken secrets file: say so, send to nothing
            log.warning("notify: could not read the notification targets: %s", exc)
            return [Outcome("secrets", False, "could not read the secrets file")]
        results = await asyncio.gather(*(self._apprise(t, note) for t in targets), self._push(note))
        outcomes = [o for result in results for o in result]
        for outcome in outcomes:
            if not outcome.ok:
                log.warning("notify %s to %s failed: %s", note.kind.value, outcome.target,
                            outcome.detail)  # fmt: skip
        return outcomes

    async def _apprise(self, target: Target, note: Notification) -> list[Outcome]:
        limit = self.settings.notify_timeout_seconds
        level = LEVELS.get(note.kind, "info")
        try:
            # Apprise keeps to the limit itself; the wait is the backstop for a stuck plugin
            # (its thread is left to finish, it cannot hold up anything else).
            outcome = await asyncio.wait_for(
                asyncio.to_thread(
                    apprise_targets.send, target, note.title, note.text(), level, limit
                ),
                timeout=limit + 1,
            )
        except TimeoutError:
            outcome = Outcome(target.shown, False, f"no answer within {limit:g} s")
        return [outcome]

    async def _push(self, note: Notification) -> list[Outcome]:
        if self.push is None:
            return []
        limit = self.settings.notify_timeout_seconds
        try:
            async with asyncio.timeout(limit * 2 + 1):
                return await self.push.send(note.push_payload())
        except TimeoutError:
            return [Outcome("push://", False, f"no answer within {limit:g} s")]
        except Exception as exc:  # never into the caller
            log.warning("notify: web push failed (%s)", type(exc).__name__)
            return [Outcome("push://", False, "web push failed; the server log has the kind")]
