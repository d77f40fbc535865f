"""The supervisor: owns every run from ``queued`` to a terminal status.

A launch, in one shape: the dispatcher (``dispatch``) takes a queued run; the supervisor
resolves its credentials once (``credentials``), has the agent's adapter build the command,
puts both in one :class:`~agentfarm.domain.launch.LaunchSpec` and hands it to the run's
backend. From then on one ingest per run (``ingest``) turns the backend's records into stored
events until the run ends. After a restart, runs that were starting or running are reattached
and ingested the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from agentfarm import tasks
from agentfarm.agents.base import AgentAdapter
from agentfarm.backends.base import Backend, LaunchInfo, RunHandle
from agentfarm.domain import diffs, errors, launch, models
from agentfarm.domain.redact import Redactor
from agentfarm.settings import Settings
from agentfarm.store import Store, push
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import (
    announce,
    budgets,
    converse,
    credentials,
    dispatch,
    events,
    files,
    fleet,
    ingest,
    notify,
    parking,
    queue,
    resuming,
    storage,
    watchdog,
    webpush,
)
from agentfarm.supervisor.hub import Hub
from agentfarm.supervisor.retention import Retention

log = logging.getLogger(__name__)


class Supervisor(resuming.Resuming):
    def __init__(
        self,
        settings: Settings,
        store: Store,
        secrets: SecretStore,
        backends: Mapping[str, Backend],
        adapters: Mapping[str, AgentAdapter],
        *,
        notifier: notify.Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.secrets = secrets
        self.backends = dict(backends)
        self.adapters = dict(adapters)
        self.hub = Hub(store, wake_gap=settings.stream_batch_ms / 1000)
        self.retention = Retention(store, self.backends, settings.retention_hours)
        self.notifier = notifier or notify.Notifier(
            settings, secrets, webpush.WebPush(settings, push.PushSubscriptions(store.database))
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handles: dict[str, RunHandle] = {}
        #: Each followed run's command: how to send it a follow-up.
        self._commands: dict[str, launch.AgentCommand] = {}
        self._stop_requested: set[str] = set()
        #: Why a run was stopped by agentfarm (a budget): the error it ends with.
        self._stop_reasons: dict[str, str] = {}
        self.announcer = announce.Announcer(settings, store, self.notifier)
        self.fleet = fleet.Fleet(settings, store, self.stop_for)
        self.fleet.budgets.on_reached = self.announcer.budget
        self.dispatcher = dispatch.Dispatcher(self.fleet.plan, self._launch, self._tasks)
        self.files = files.RunFiles(store, self.backends, self.hub, self.dispatcher.active)
        self.parking = parking.Parking(
            settings, store, self.backends, self.adapters, self._append,
            self._resume_parked, self.dispatcher.wake, self._tasks,
        )  # fmt: skip
        self.fleet.held = self.parking.holding

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.notifier.start()
        active = await self.store.active_runs()
        self.parking.restore(active)
        for run in active:
            if run.status not in (models.RunStatus.queued, models.RunStatus.parked):
                self.dispatcher.active.add(run.id)
                tasks.spawn(self._resume(run), name=f"resume-{run.id}", into=self._tasks)
        tasks.spawn(self.dispatcher.run_forever(), name="dispatch", into=self._tasks)
        if self.settings.retention_hours > 0:
            tasks.spawn(self.retention.run_forever(), name="retention", into=self._tasks)
        watch = self.fleet.watch_forever(self.dispatcher.wake)
        tasks.spawn(watch, name="budgets", into=self._tasks)
        self.dispatcher.wake()

    async def close(self) -> None:
        """Stop watching; the agents themselves keep running and are reattached next start."""
        await tasks.stop(list(self._tasks))
        await self.notifier.close()

    # --- public operations ---------------------------------------------------------------
    async def submit(
        self,
        spec: models.AgentSpec,
        config: models.AgentConfig | None = None,
        *,
        branch: str | None = None,
        origin: models.RunOrigin = "person",
        run_id: str | None = None,
    ) -> models.Run:
        """Queue a run. It works on ``branch`` when given (the pipeline names its branches),
        else on ``agentfarm/<run id>``; with ``spec.base_branch == branch`` it continues that
        existing branch (a follow-up) instead of starting a new one. ``origin`` places it in
        the queue (a person's first, by default) and under the pipeline's per-repository cap.
        ``run_id`` is an id chosen beforehand (an orchestration dispatch records it before the
        run exists, so that a crash in between never launches twice). Refused with 429
        (``LimitReachedError``) over the queue's length or a budget."""
        if branch is not None and not launch.valid_branch(branch):
            raise errors.InvalidInputError(
                f"{branch!r} is not a branch name git takes (no spaces, `..`, `~^:?*[\\`, "
                "leading `-` or `.`): name the branch with letters, digits, `-`, `_`, `.`, `/`"
            )
        if spec.agent not in self.adapters:
            raise errors.InvalidInputError(f"unknown agent {spec.agent!r}")
        if spec.backend.type not in self.backends:
            raise errors.ConfigurationError(
                f"the {spec.backend.type!r} backend is not enabled on this server"
            )
        if not spec.prompt.strip():
            raise errors.InvalidInputError("the run has no prompt: give one in the config or run")
        budgets.check_supported(spec)
        # Fail early, before anything is queued.
        creds = (await self._credentials(spec)).require()
        await self.fleet.admit(config)
        run = models.Run(
            id=run_id or models.new_id(),
            spec=spec,
            config_id=config.id if config else None,
            config_name=config.name if config else None,
            origin=origin,
            continuation=models.Continuation(credentials_key=creds.model_key),
        )
        run.branch = branch or launch.branch_name(run.id)
        await self.fleet.enqueue(run)
        self.hub.runs.changed(run)
        await self._append(run.id, [events.status_event(models.RunStatus.queued)])
        self.dispatcher.wake()
        return run

    async def stop_run(self, run_id: str) -> models.Run:
        run = await self.store.get_run(run_id)
        if run.status.terminal:
            raise errors.ConflictError(f"run {run_id} has already ended ({run.status.value})")
        self._stop_requested.add(run_id)
        if await self._stop_parked(run):
            return run
        if run.status == models.RunStatus.queued and run_id not in self.dispatcher.active:
            try:
                return await self._finish_without_agent(
                    run, models.RunStatus.stopped, "stopped before it started"
                )
            except errors.StatusConflictError:
                # The dispatcher took it meanwhile (the launch sees the stop request), or
                # another stop ended it first.
                current = await self.store.get_run(run_id)
                if current.status.terminal:
                    self._stop_requested.discard(run_id)
                return current
        handle = self._handles.get(run_id)
        if handle is None:  # starting: kept, so that a restart before the start honours it
            with contextlib.suppress(errors.ConflictError):
                await self._append(run_id, [events.stop_asked_event()])
        else:  # answered once the backend has it: a kill -9 of ours cannot lose it
            grace = self.settings.stop_grace_seconds
            stopping = tasks.spawn(handle.stop(grace), name=f"stop-{run_id}", into=self._tasks)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(stopping), 5)
        return run

    async def stop_for(self, run_id: str, reason: str) -> None:
        """Stop a running run because of ``reason`` (a budget), which it ends with."""
        if run_id in self._stop_requested or run_id not in self._handles:
            return
        self._stop_reasons[run_id] = reason
        await self._append(run_id, [events.notice_event(f"{reason}: stopping the agent")])
        with contextlib.suppress(errors.ConflictError):  # it ended meanwhile
            await self.stop_run(run_id)

    async def queue_info(self, run_ids: list[str] | None = None) -> dict[str, queue.QueueInfo]:
        """Queued runs' places in the queue and what they wait for, by run id."""
        info = (await self.fleet.plan(set(self.dispatcher.active))).info
        return info if run_ids is None else {k: v for k, v in info.items() if k in run_ids}

    async def send(self, run_id: str, text: str) -> None:
        """A follow-up message for the running agent (``converse``); 409 saying why not."""
        run = await self.store.get_run(run_id)
        handle, command = converse.check_live(
            run, self._handles.get(run_id), self._commands.get(run_id), "take a message"
        )
        await self._append(run_id, [await converse.send(run, handle, command, text)])

    async def interrupt(self, run_id: str) -> None:
        """End the agent's running turn, not the run (``converse``); 409 saying why not."""
        run = await self.store.get_run(run_id)
        handle, command = converse.check_live(
            run, self._handles.get(run_id), self._commands.get(run_id), "be interrupted"
        )
        await self._append(run_id, [await converse.interrupt(run, handle, command)])

    async def delete_run(self, run_id: str) -> None:
        await self.files.delete(run_id)

    async def diff(self, run_id: str, *, limit: int = diffs.PATCH_LIMIT) -> diffs.RunDiff:
        return await self.files.diff(run_id, limit=limit)

    # --- internals -----------------------------------------------------------------------
    async def _credentials(self, spec: models.AgentSpec) -> credentials.Credentials:
        return await credentials.for_spec(self.settings, self.secrets, spec)

    async def _append(
        self,
        run_id: str,
        drafts: list[models.EventDraft],
        *,
        cursor: int | None = None,
        run_fields: Mapping[str, Any] | None = None,
        final: bool = False,
    ) -> None:
        stored, run = await self.store.append_events(
            run_id, drafts, cursor=cursor, run_fields=run_fields
        )
        await self.hub.publish(run_id, stored, final=final)
        self.hub.runs.changed(run)
        if final:
            await self.announcer.ended(run_id)

    async def _finish_without_agent(
        self, run: models.Run, status: models.RunStatus, error: str | None
    ) -> models.Run:
        fields = {"status": status, "finished_at": models.utcnow(), "error": error}
        await self._append(
            run.id, [events.status_event(status, error=error)], run_fields=fields, final=True
        )
        self._stop_requested.discard(run.id)
        self.hub.forget(run.id)
        return await self.store.get_run(run.id)

    @contextlib.asynccontextmanager
    async def _owning(
        self, run: models.Run, status: models.RunStatus, what: str
    ) -> AsyncIterator[None]:
        """Own a run while its task lives: an unexpected error ends the run with ``status``
        and a sentence, and the run's slot is always given back."""
        try:
            yield
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, errors.StorageFullError):
                # The agent cannot be recorded: it stops, and its end is stored.
                end = functools.partial(self._finish_without_agent, run, status, str(exc))
                await storage.stop_and_end(run.id, self._handles.get(run.id), self.store, end)
            else:
                log.exception("run %s: %s", run.id, what)
                with contextlib.suppress(Exception):
                    await self._finish_without_agent(run, status, f"{what}: {exc}")
        finally:
            self._handles.pop(run.id, None)
            self._commands.pop(run.id, None)
            self._stop_reasons.pop(run.id, None)
            self.dispatcher.release(run.id)

    async def _launch(self, run: models.Run) -> None:
        async with self._owning(run, models.RunStatus.failed, "internal error in agentfarm"):
            try:
                await self._append(
                    run.id,
                    [events.status_event(models.RunStatus.starting)],
                    run_fields={"status": models.RunStatus.starting},
                )
            except errors.StatusConflictError as exc:
                # Stopped (or otherwise ended) between the dispatcher's look and now.
                log.info("run %s: not launched, it is %s", run.id, exc.current)
                self._stop_requested.discard(run.id)
                return
            await self._start_agent(run)

    async def _start_agent(self, run: models.Run) -> None:
        """A ``starting`` run's launch: its command and credentials to its backend."""
        if run.id in self._stop_requested:
            stopped = models.RunStatus.stopped
            await self._finish_without_agent(run, stopped, "stopped before it started")
            return
        creds: credentials.Credentials | None = None
        try:
            creds = await self._credentials(run.spec)
            backend = self.backends[run.spec.backend.type]
            spec = launch.LaunchSpec(
                run_id=run.id,
                branch=run.branch or launch.branch_name(run.id),
                command=self.adapters[run.spec.agent].build_command(
                    run.spec, base_url=creds.base_url
                ),
                credentials=creds.require().env,
                git_auth=creds.git_auth,
            )
            handle, info = await backend.launch(run, spec)
        except errors.AgentfarmError as exc:
            redacted = (creds.redactor if creds else Redactor()).text(str(exc))
            await self._finish_without_agent(run, models.RunStatus.failed, redacted)
            await self._discard_failed_launch(run)
            return
        await self._attached(run, handle, info, spec.command, creds.redactor)

    async def _resume(self, run: models.Run) -> None:
        async with self._owning(run, models.RunStatus.lost, "could not reattach after a restart"):
            backend = self.backends.get(run.spec.backend.type)
            if backend is None:
                await self._finish_without_agent(
                    run,
                    models.RunStatus.lost,
                    f"the {run.spec.backend.type!r} backend is no longer enabled on this server",
                )
                return
            await self._recall_stop(run)
            if await self._launch_cut_short(run, backend):
                return
            # Resolved again: the branch's push (at the end) needs the git token.
            creds: credentials.Credentials | None = None
            # A broken secrets file, a secret removed meanwhile: the push will say so.
            with contextlib.suppress(errors.ConfigurationError, errors.InvalidInputError):
                creds = await self._credentials(run.spec)
            git_auth = creds.git_auth if creds else None
            handle, info = await backend.attach(run, git_auth=git_auth)
            # Pure: the same command as at launch, for its follow-up format.
            base_url = creds.base_url if creds else None
            command = self.adapters[run.spec.agent].build_command(run.spec, base_url=base_url)
            redactor = creds.redactor if creds else Redactor()
            await self._attached(run, handle, info, command, redactor)

    async def _attached(
        self,
        run: models.Run,
        handle: RunHandle,
        info: LaunchInfo,
        command: launch.AgentCommand,
        redactor: Redactor,
    ) -> None:
        """The one path after a launch and after a reattach: record the run as running (with
        its start time, branch and workspace), honour a stop asked for meanwhile, ingest."""
        self._handles[run.id] = handle
        self._commands[run.id] = command
        current = await self.store.get_run(run.id)
        fields: dict[str, Any] = {
            "status": models.RunStatus.running,
            "started_at": current.started_at or models.utcnow(),
            "branch": info.branch or current.branch,
            "workspace": info.workspace or current.workspace,
        }
        # A backend's notices may quote what it was given (a URL, git's words): mask them too.
        drafts = [events.redact(events.notice_event(n), redactor) for n in info.notices]
        if current.status != models.RunStatus.running:
            drafts.append(events.status_event(models.RunStatus.running, branch=fields["branch"]))
        if drafts or any(getattr(current, k) != v for k, v in fields.items()):
            await self._append(run.id, drafts, run_fields=fields)
        if run.id in self._stop_requested:
            await handle.stop(self.settings.stop_grace_seconds)
        timer = self.fleet.watch_time(current.model_copy(update=fields), self._tasks)
        try:
            await ingest.Ingest(
                run=current,
                handle=handle,
                parser=self.adapters[run.spec.agent].new_parser(),
                redactor=redactor,
                settings=self.settings,
                append=self._append,
                stop_requested=self._stop_requested,
                forget=self.hub.forget,
                tasks=self._tasks,
                stored=await self.store.get_cursor(run.id),
                stop_reasons=self._stop_reasons,
                over_budget=self.stop_for,
                limits=watchdog.Limits.of(self.settings, run.spec),
                park=self._park,
            ).run_to_end()
        finally:
            if timer is not None:
                timer.cancel()
