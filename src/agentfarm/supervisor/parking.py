"""Usage-limit parking and continued runs.

When the agent reports the model's usage limit (``agent.rate_limit``, status ``rejected``),
the run does not end: it becomes ``parked`` until the limit resets (plus a margin), its
workspace, branch and HOME kept as they are. A timer then resumes it in a new agent process
in the same session (``--resume``) with a prompt to continue. A stalled run (see
``watchdog``) is parked the same way, until now. Runs queued on the same credentials are held
meanwhile, rather than failing one after another on the same limit.

Everything needed survives a restart of the control plane: ``parked_until`` and the run's
``continuation`` (counts, figures of the earlier processes, the credentials' digest) are
stored; ``restore`` re-arms the timers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from agentfarm import tasks
from agentfarm.agents.base import AgentAdapter, Resumable, StreamParser
from agentfarm.backends.base import Backend, ContinuesEnded, LaunchInfo, Resumes, RunHandle
from agentfarm.domain import errors, launch, models
from agentfarm.domain.launch import GitAuth
from agentfarm.domain.redact import Redactor
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.supervisor import credentials, events, ingest, watchdog

log = logging.getLogger(__name__)

USAGE_LIMIT, STALLED, PERSON = "usage_limit", "stalled", "person"
#: An ended run a person continued with a new prompt (``Resuming.resume_run``).
CONTINUED = "continued"
#: A due resume that finds the run still busy (its last process winding up) looks again after.
RETRY_SECONDS = 0.2

PROMPTS = {
    USAGE_LIMIT: "The model's usage limit has reset. Continue the task from where you "
    "stopped: the workspace and the branch are as you left them.",
    STALLED: "Your previous process stopped responding and was ended. Continue the task from "
    "where you stopped: the workspace and the branch are as you left them.",
    PERSON: "Continue the task from where you stopped: the workspace and the branch are as "
    "you left them.",
    CONTINUED: "Continue the task from where you stopped: the workspace and the branch are as "
    "you left them.",  # a person's own prompt comes instead (continuing.py)
}

Resume = Callable[[models.Run, str], Awaitable[Any]]


class Parking:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        backends: Mapping[str, Backend],
        adapters: Mapping[str, AgentAdapter],
        append: ingest.Append,
        resume: Resume,
        wake: Callable[[], None],
        into: set[asyncio.Task[Any]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.backends = backends
        self.adapters = adapters
        self.append = append
        self.resume = resume
        self.wake = wake
        self.tasks = into
        self._timers: dict[str, asyncio.Task[Any]] = {}
        #: Credentials' digest -> when their usage limit resets.
        self._limits: dict[str, datetime] = {}

    # --- queries ---------------------------------------------------------------------------
    def holding(self, run: models.Run) -> str | None:
        """What holds a queued run whose credentials wait for their usage limit to reset
        (None: nothing), as the queue shows it."""
        key = run.continuation.credentials_key
        until = self._limits.get(key) if key else None
        if until is None or until <= models.utcnow():
            return None
        return f"the model's usage limit of its credentials, until {events.fmt_time(until)}"

    def can_continue(self, run: models.Run) -> bool:
        """The run's backend and agent can start its next agent process."""
        backend = self.backends.get(run.spec.backend.type)
        return isinstance(backend, Resumes) and isinstance(
            self.adapters.get(run.spec.agent), Resumable
        )

    async def ended_refusal(self, run: models.Run) -> str | None:
        """Why the run's backend cannot continue this ended run (None: nothing against it)."""
        backend = self.backends.get(run.spec.backend.type)
        return await backend.continue_refusal(run) if isinstance(backend, ContinuesEnded) else None

    async def start_next(
        self, run: models.Run, spec: launch.LaunchSpec, reason: str
    ) -> tuple[RunHandle, LaunchInfo]:
        """The run's next agent process: where it ran, or, for an ended run its backend
        continues elsewhere (``ContinuesEnded``), there."""
        backend = self.backend(run)
        if reason == CONTINUED and isinstance(backend, ContinuesEnded):
            return await backend.continue_ended(run, spec)
        return await backend.resume(run, spec)

    def launch_spec(
        self,
        run: models.Run,
        reason: str,
        creds: credentials.Credentials,
        prompt: str | None = None,
    ) -> launch.LaunchSpec:
        """The launch of a parked run's next agent process: its session, resumed (with
        ``prompt``, a person's, else the reason's own)."""
        adapter = self.adapters[run.spec.agent]
        if not isinstance(adapter, Resumable) or not run.session_id:
            raise errors.ConflictError(f"run {run.id} has no agent session to resume")
        return launch.LaunchSpec(
            run_id=run.id,
            branch=run.branch or launch.branch_name(run.id),
            command=adapter.resume_command(run.spec, run.session_id, prompt or PROMPTS[reason]),
            credentials=creds.env,
            git_auth=creds.git_auth,
        )

    def backend(self, run: models.Run) -> Resumes:
        backend = self.backends.get(run.spec.backend.type)
        if not isinstance(backend, Resumes):
            raise errors.ConflictError(
                f"the {run.spec.backend.type} backend cannot start a new process for a run"
            )
        return backend

    # --- the decision at the end of an agent process ----------------------------------------
    async def park(self, run: models.Run, parser: StreamParser, ending: ingest.Ending) -> bool:
        """``ingest.Park``: True when the run is parked instead of ending."""
        info = ending.info
        if info.lost or info.oom_killed or not self.can_continue(run):
            return False
        current = await self.store.get_run(run.id)
        if not current.session_id or current.status != models.RunStatus.running:
            return False
        cont = current.continuation
        limit = parser.summary.usage_limit
        now = models.utcnow()
        if ending.stalled is not None:
            limits = watchdog.Limits.of(self.settings, run.spec)
            if cont.stall_resumes >= limits.stall_resumes:
                return False
            cont = cont.model_copy(update={"stall_resumes": cont.stall_resumes + 1})
            reason, until = STALLED, now
            what = f"stalled {ending.stalled.waiting_for}: resuming it in its session"
        elif limit is not None and limit.rejected:
            if cont.parks >= self.settings.park_max:
                return False
            cont = cont.model_copy(update={"parks": cont.parks + 1})
            reason = USAGE_LIMIT
            resets = (
                datetime.fromtimestamp(limit.resets_at, now.tzinfo)
                if limit.resets_at is not None
                else now + timedelta(seconds=self.settings.park_unknown_reset_seconds)
            )
            until = max(resets, now) + timedelta(seconds=self.settings.park_margin_seconds)
            if cont.credentials_key:
                self._hold(cont.credentials_key, until)
            what = f"the model's usage limit was reached: parked until {events.fmt_time(until)}"
        else:
            return False
        cont = cont.model_copy(
            update={
                "reason": reason,
                "base_cost_usd": current.cost_usd,
                "base_usage": current.usage,
                "base_num_turns": current.num_turns,
            }
        )
        fields: dict[str, Any] = {
            "status": models.RunStatus.parked,
            "parked_until": until,
            "continuation": cont,
        }
        drafts = [
            events.notice_event(what),
            events.status_event(models.RunStatus.parked, until=until.isoformat(), reason=reason),
        ]
        # The events are stored: the next process's records start a new spool at cursor 0.
        await self.append(run.id, drafts, cursor=0, run_fields=fields)
        self.arm(run.id, until)
        return True

    async def end(
        self,
        run: models.Run,
        status: models.RunStatus,
        error: str,
        git_auth: GitAuth | None,
        redactor: Redactor,
    ) -> None:
        """End a run that has no agent process (parked, or its resume failed): its branch is
        brought home first."""
        drafts: list[models.EventDraft] = []
        try:
            handle, _ = await self.backends[run.spec.backend.type].attach(run, git_auth=git_auth)
            drafts += [events.notice_event(n) for n in await handle.finalize()]
            if handle.branch_outcome is not None:
                drafts.append(events.branch_event(handle.branch_outcome))
        except Exception as exc:  # the run ends either way; say what went wrong
            log.warning("run %s: bringing its branch home failed", run.id, exc_info=True)
            drafts.append(events.notice_event(f"bringing the results home failed: {exc}"))
        drafts.append(events.status_event(status, error=error))
        fields = {
            "status": status,
            "finished_at": models.utcnow(),
            "error": error,
            "parked_until": None,
        }
        drafts = [events.redact(d, redactor) for d in drafts]
        await self.append(run.id, drafts, run_fields=fields, final=True)

    # --- timers ----------------------------------------------------------------------------
    def restore(self, runs: list[models.Run]) -> None:
        """After a restart: re-arm the parked runs' timers and their credentials' holds."""
        for run in runs:
            if run.status != models.RunStatus.parked:
                continue
            until = run.parked_until or models.utcnow()
            key = run.continuation.credentials_key
            if run.continuation.reason == USAGE_LIMIT and key:
                self._hold(key, until)
            self.arm(run.id, until)

    def release(self, run: models.Run) -> None:
        """A person resumed a parked run early: they judge the limit gone, so the runs held
        on its credentials may go too."""
        key = run.continuation.credentials_key
        if key and self._limits.pop(key, None) is not None:
            self.wake()

    def _hold(self, key: str, until: datetime) -> None:
        """Hold runs on these credentials until ``until``; the dispatcher looks again then."""
        if until <= self._limits.get(key, until) and key in self._limits:
            return
        self._limits[key] = until
        tasks.spawn(self._wake_at(until), name=f"limit-{key}", into=self.tasks)

    async def _wake_at(self, until: datetime) -> None:
        delay = (until - models.utcnow()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        self._expire()

    def arm(self, run_id: str, until: datetime) -> None:
        self.disarm(run_id)
        self._timers[run_id] = tasks.spawn(
            self._at(run_id, until), name=f"park-{run_id}", into=self.tasks
        )

    def disarm(self, run_id: str) -> None:
        timer = self._timers.pop(run_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _at(self, run_id: str, until: datetime) -> None:
        delay = (until - models.utcnow()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        self._timers.pop(run_id, None)
        while (run := await self.store.get_run(run_id)).status == models.RunStatus.parked:
            try:
                await self.resume(run, run.continuation.reason or USAGE_LIMIT)
                return
            except errors.ConflictError:
                # The process before is still being wound up (a reset already past fires at
                # once), or a person is resuming or stopping it: look again shortly.
                await asyncio.sleep(RETRY_SECONDS)

    def _expire(self) -> None:
        now = models.utcnow()
        for key, until in list(self._limits.items()):
            if until <= now:
                del self._limits[key]
        self.wake()  # runs held on those credentials may go now
