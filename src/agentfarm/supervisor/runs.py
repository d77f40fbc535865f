"""The supervisor: owns every run from ``queued`` to a terminal status.

One ingest task per active run reads the backend's records, turns them into events with the
agent adapter, and stores events and the backend cursor in one transaction before publishing
them. After a restart the parser is rebuilt by replaying records up to the stored cursor
without storing them again, so no event is lost or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from agentfarm.agents.base import AgentAdapter, StreamParser
from agentfarm.backends.base import Backend, ExitInfo, LaunchInfo, Record, RunHandle
from agentfarm.domain import errors, gittokens, models
from agentfarm.domain.redact import Redactor
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import tasks
from agentfarm.supervisor.hub import Hub
from agentfarm.supervisor.retention import Retention

log = logging.getLogger(__name__)

CREDENTIAL_NAMES = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")
BATCH = 500
_DONE = object()


def status_event(status: models.RunStatus, **extra: Any) -> models.EventDraft:
    data: dict[str, Any] = {"status": status.value}
    data.update({k: v for k, v in extra.items() if v is not None})
    return models.EventDraft(type=models.EventType.run_status, data=data)


def notice_event(message: str) -> models.EventDraft:
    return models.EventDraft(type=models.EventType.run_notice, data={"message": message})


def find_claude(settings: Settings) -> str:
    """The Claude Code CLI: the configured path, the project's pinned copy, then PATH."""
    candidates: list[str | None] = [settings.claude_bin]
    tools = os.environ.get("AGENTFARM_TOOLS")
    if tools:
        candidates.append(str(Path(tools) / "node_modules" / ".bin" / "claude"))
    checkout = Path(__file__).resolve().parents[3] / ".tools" / "node_modules" / ".bin" / "claude"
    candidates += [str(checkout), shutil.which("claude")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if settings.claude_bin:
        raise errors.ConfigurationError(
            f"AGENTFARM_CLAUDE_BIN={settings.claude_bin} is not an executable file"
        )
    raise errors.ConfigurationError(
        "the Claude Code CLI was not found: run `make run` (it installs the pinned version) "
        "or set AGENTFARM_CLAUDE_BIN"
    )


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        secrets: SecretStore,
        backends: Mapping[str, Backend],
        adapters: Mapping[str, AgentAdapter],
    ) -> None:
        self.settings = settings
        self.store = store
        self.secrets = secrets
        self.backends = dict(backends)
        self.adapters = dict(adapters)
        self.hub = Hub(store)
        self.retention = Retention(store, self.backends, settings.retention_hours)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handles: dict[str, RunHandle] = {}
        self._active: set[str] = set()
        self._stop_requested: set[str] = set()
        self._wakeup = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        for run in await self.store.active_runs():
            if run.status != models.RunStatus.queued:
                self._active.add(run.id)
                tasks.spawn(self._resume(run), name=f"resume-{run.id}", into=self._tasks)
        tasks.spawn(self._dispatch(), name="dispatch", into=self._tasks)
        if self.settings.retention_hours > 0:
            tasks.spawn(self.retention.run_forever(), name="retention", into=self._tasks)
        self._wakeup.set()

    async def close(self) -> None:
        """Stop watching; the agents themselves keep running and are reattached next start."""
        await tasks.stop(list(self._tasks))

    # --- credentials ---------------------------------------------------------------------
    def credentials(self, spec: models.AgentSpec | None = None) -> dict[str, str]:
        stored = self.secrets.all()
        found: dict[str, str] = {}
        from_env = {
            "ANTHROPIC_API_KEY": self.settings.anthropic_api_key,
            "CLAUDE_CODE_OAUTH_TOKEN": self.settings.claude_code_oauth_token,
        }
        for name in CREDENTIAL_NAMES:
            env_value = from_env[name]
            value = env_value.get_secret_value() if env_value else stored.get(name)
            if value:
                found[name] = value
        base_url = self.settings.anthropic_base_url or stored.get("ANTHROPIC_BASE_URL")
        if base_url:
            found["ANTHROPIC_BASE_URL"] = base_url
        required = spec is None or spec.backend.model_credentials_required
        if not (set(found) & set(CREDENTIAL_NAMES)) and required:
            raise errors.ConfigurationError(
                "no Claude credentials are configured: set CLAUDE_CODE_OAUTH_TOKEN (from "
                "`claude setup-token`) or ANTHROPIC_API_KEY in the server's environment, or "
                "store one with `agentfarm secret set CLAUDE_CODE_OAUTH_TOKEN`"
            )
        if spec is not None and spec.backend.clones_remotely:
            found |= self._git_tokens(stored)
        return found

    def _git_tokens(self, stored: Mapping[str, str]) -> dict[str, str]:
        """Git tokens, for backends that clone and push away from this host (a pod): the
        backend hands on only the one for the run's repository host (domain.gittokens)."""
        tokens = {k: v for k, v in stored.items() if gittokens.is_git_token(k) and v}
        for name, env_value in (
            ("GITHUB_TOKEN", self.settings.github_token),
            ("FORGEJO_TOKEN", self.settings.forgejo_token),
        ):
            if env_value is not None and env_value.get_secret_value():
                tokens[name] = env_value.get_secret_value()
        return tokens

    def _redactor(self, creds: Mapping[str, str]) -> Redactor:
        return Redactor.of(self.secrets.all(), {k: v for k, v in creds.items() if "URL" not in k})

    # --- public operations ---------------------------------------------------------------
    async def submit(
        self, spec: models.AgentSpec, *, config: models.AgentConfig | None = None
    ) -> models.Run:
        if spec.agent not in self.adapters:
            raise errors.InvalidInputError(f"unknown agent {spec.agent!r}")
        if spec.backend.type not in self.backends:
            raise errors.ConfigurationError(
                f"the {spec.backend.type!r} backend is not enabled on this server"
            )
        if not spec.prompt.strip():
            raise errors.InvalidInputError("the run has no prompt: give one in the config or run")
        # Fail early, before anything is queued (the secrets file is read off the loop).
        await asyncio.to_thread(self.credentials, spec)
        run = models.Run(
            spec=spec,
            config_id=config.id if config else None,
            config_name=config.name if config else None,
        )
        run.branch = f"agentfarm/{run.id}"
        await self.store.create_run(run)
        await self._append(run.id, [status_event(models.RunStatus.queued)])
        self._wakeup.set()
        return run

    async def stop_run(self, run_id: str) -> models.Run:
        run = await self.store.get_run(run_id)
        if run.status.terminal:
            raise errors.ConflictError(f"run {run_id} has already ended ({run.status.value})")
        self._stop_requested.add(run_id)
        if run.status == models.RunStatus.queued and run_id not in self._active:
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
        if handle is not None:
            tasks.spawn(
                handle.stop(self.settings.stop_grace_seconds),
                name=f"stop-{run_id}",
                into=self._tasks,
            )
        return run

    async def send(self, run_id: str, text: str) -> None:
        run = await self.store.get_run(run_id)
        handle = self._handles.get(run_id)
        if run.status.terminal or handle is None:
            raise errors.ConflictError(f"run {run_id} is not running; it cannot take a message")
        await handle.send(self.adapters[run.spec.agent].followup(text))
        await self._append(
            run_id, [models.EventDraft(type=models.EventType.user_message, data={"text": text})]
        )

    async def delete_run(self, run_id: str) -> None:
        """Delete an ended run: its files (through its backend's cleanup), then its row and
        events. A run not yet ended is a conflict: stop it first."""
        run = await self.store.get_run(run_id)
        if not run.status.terminal or run_id in self._active:
            raise errors.ConflictError(
                f"run {run_id} is {run.status.value}: stop it first (`agentfarm stop {run_id}`), "
                "then delete it once it has ended"
            )
        backend = self.backends.get(run.spec.backend.type)
        if backend is not None:
            # Files first: if this fails the run is still listed and can be deleted again.
            await backend.cleanup(run)
        await self.store.delete_run(run_id)
        self.hub.forget(run_id)

    # --- internals -----------------------------------------------------------------------
    async def _append(
        self,
        run_id: str,
        drafts: list[models.EventDraft],
        *,
        cursor: int | None = None,
        run_fields: Mapping[str, Any] | None = None,
        final: bool = False,
    ) -> None:
        events, _ = await self.store.append_events(
            run_id, drafts, cursor=cursor, run_fields=run_fields
        )
        await self.hub.publish(run_id, events, final=final)

    async def _finish_without_agent(
        self, run: models.Run, status: models.RunStatus, error: str | None
    ) -> models.Run:
        fields = {"status": status, "finished_at": models.utcnow(), "error": error}
        await self._append(
            run.id, [status_event(status, error=error)], run_fields=fields, final=True
        )
        self._stop_requested.discard(run.id)
        self.hub.forget(run.id)
        return await self.store.get_run(run.id)

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            free = self.settings.max_concurrent_runs - len(self._active)
            if free <= 0:
                continue
            queued = [
                r
                for r in await self.store.active_runs()
                if r.status == models.RunStatus.queued and r.id not in self._active
            ]
            for run in queued[:free]:
                self._active.add(run.id)
                tasks.spawn(self._launch(run), name=f"run-{run.id}", into=self._tasks)

    def _binary(self, run: models.Run) -> str:
        if run.spec.backend.type == "local":
            return find_claude(self.settings)
        return "claude"

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
            log.exception("run %s: %s", run.id, what)
            with contextlib.suppress(Exception):
                await self._finish_without_agent(run, status, f"{what}: {exc}")
        finally:
            self._active.discard(run.id)
            self._handles.pop(run.id, None)
            self._wakeup.set()

    async def _launch(self, run: models.Run) -> None:
        async with self._owning(run, models.RunStatus.failed, "internal error in agentfarm"):
            try:
                await self._append(
                    run.id,
                    [status_event(models.RunStatus.starting)],
                    run_fields={"status": models.RunStatus.starting},
                )
            except errors.StatusConflictError as exc:
                # Stopped (or otherwise ended) between the dispatcher's look and now.
                log.info("run %s: not launched, it is %s", run.id, exc.current)
                self._stop_requested.discard(run.id)
                return
            if run.id in self._stop_requested:
                await self._finish_without_agent(
                    run, models.RunStatus.stopped, "stopped before it started"
                )
                return
            try:
                adapter = self.adapters[run.spec.agent]
                backend = self.backends[run.spec.backend.type]
                creds = await asyncio.to_thread(self.credentials, run.spec)
                command = adapter.build_command(run.spec, binary=self._binary(run))
                handle, info = await backend.launch(run, command, creds)
            except errors.AgentfarmError as exc:
                redacted = Redactor.of(self.secrets.all()).text(str(exc))
                await self._finish_without_agent(run, models.RunStatus.failed, redacted)
                await self._discard_failed_launch(run)
                return
            await self._attached(run, handle, info, creds)

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
            handle, info = await backend.attach(run)
            creds: dict[str, str] = {}
            with contextlib.suppress(errors.ConfigurationError):
                creds = await asyncio.to_thread(self.credentials, run.spec)
            await self._attached(run, handle, info, creds)

    async def _attached(
        self, run: models.Run, handle: RunHandle, info: LaunchInfo, creds: Mapping[str, str]
    ) -> None:
        """The one path after a launch and after a reattach: record the run as running (with
        its start time, branch and workspace), honour a stop asked for meanwhile, ingest."""
        self._handles[run.id] = handle
        current = await self.store.get_run(run.id)
        fields: dict[str, Any] = {
            "status": models.RunStatus.running,
            "started_at": current.started_at or models.utcnow(),
            "branch": info.branch or current.branch,
            "workspace": info.workspace or current.workspace,
        }
        drafts = [notice_event(n) for n in info.notices]
        if current.status != models.RunStatus.running:
            drafts.append(status_event(models.RunStatus.running, branch=fields["branch"]))
        if drafts or any(getattr(current, k) != v for k, v in fields.items()):
            await self._append(run.id, drafts, run_fields=fields)
        if run.id in self._stop_requested:
            await handle.stop(self.settings.stop_grace_seconds)
        redactor = await asyncio.to_thread(self._redactor, creds)
        await self._ingest(run, handle, redactor)

    async def _pump(self, handle: RunHandle, queue: asyncio.Queue[Record | object]) -> None:
        try:
            async for record in handle.records(after=0):
                await queue.put(record)
        finally:
            await queue.put(_DONE)

    async def _ingest(self, run: models.Run, handle: RunHandle, redactor: Redactor) -> None:
        parser = self.adapters[run.spec.agent].new_parser()
        stored = await self.store.get_cursor(run.id)
        queue: asyncio.Queue[Record | object] = asyncio.Queue(maxsize=4 * BATCH)
        pump = tasks.spawn(self._pump(handle, queue), name=f"pump-{run.id}", into=self._tasks)
        exit_info: ExitInfo | None = None
        watchdog = self.settings.watchdog_seconds or None
        watchdog_fired = False
        last_summary: dict[str, Any] = {}
        try:
            while exit_info is None:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=watchdog)
                except TimeoutError:
                    if not watchdog_fired:
                        watchdog_fired = True
                        await self._append(
                            run.id,
                            [notice_event(f"no output for {watchdog:.0f} s: stopping the agent")],
                        )
                        self._stop_requested.add(run.id)
                        await handle.stop(self.settings.stop_grace_seconds)
                    continue
                batch = [item]
                while len(batch) < BATCH and not queue.empty():
                    batch.append(queue.get_nowait())
                drafts: list[models.EventDraft] = []
                cursor: int | None = None
                for entry in batch:
                    if not isinstance(entry, Record):
                        exit_info = exit_info or ExitInfo(
                            exit_code=None, lost=True, error="the backend stopped reporting"
                        )
                        break
                    new = _translate(parser, entry)
                    if entry.kind == "exit":
                        exit_info = entry.exit or ExitInfo(exit_code=None)
                    if entry.cursor > stored:
                        drafts.extend(new)
                        cursor = entry.cursor
                summary = _summary_fields(parser)
                fields = summary if summary != last_summary else None
                last_summary = summary
                if drafts or cursor is not None:
                    drafts = [_redact(d, redactor) for d in drafts]
                    await self._append(run.id, drafts, cursor=cursor, run_fields=fields)
                    if cursor is not None:
                        stored = max(stored, cursor)
        finally:
            pump.cancel()
        await self._conclude(run, handle, parser, exit_info, redactor, watchdog_fired)

    async def _conclude(
        self,
        run: models.Run,
        handle: RunHandle,
        parser: StreamParser,
        info: ExitInfo,
        redactor: Redactor,
        watchdog_fired: bool,
    ) -> None:
        stopped = info.stopped or (run.id in self._stop_requested and not info.lost)
        outcome = parser.finish(info.exit_code, info.signal, stopped=stopped, lost=info.lost)
        error = outcome.error
        if info.lost and info.error:
            error = f"{error} ({info.error})" if error else info.error
        if info.oom_killed and outcome.status != models.RunStatus.succeeded:
            error = run.spec.backend.out_of_memory()
        if watchdog_fired:
            quiet = self.settings.watchdog_seconds
            error = f"the agent printed nothing for {quiet:.0f} s and was stopped"
            outcome.status = models.RunStatus.failed
        drafts: list[models.EventDraft] = []
        try:
            drafts += [notice_event(n) for n in await handle.finalize()]
        except Exception as exc:  # the run is over either way; say what went wrong
            log.warning("run %s: finalize failed", run.id, exc_info=True)
            drafts.append(notice_event(f"bringing the results home failed: {exc}"))
        if error:
            error = redactor.text(error)
        drafts.append(status_event(outcome.status, error=error, exit_code=info.exit_code))
        fields: dict[str, Any] = {
            "status": outcome.status,
            "finished_at": models.utcnow(),
            "exit_code": info.exit_code,
            "error": error,
            **_summary_fields(parser),
        }
        await self._append(
            run.id, [_redact(d, redactor) for d in drafts], run_fields=fields, final=True
        )
        self._stop_requested.discard(run.id)
        self.hub.forget(run.id)
        try:  # every record is stored and the run has ended: the raw output is a second copy
            await handle.discard_output()
        except Exception:  # retention removes it later
            log.warning("run %s: could not remove its raw output", run.id, exc_info=True)

    async def _discard_failed_launch(self, run: models.Run) -> None:
        """A launch that failed leaves nothing behind (no branch, no workspace worth a look:
        the reason is in the run's error)."""
        try:
            await self.backends[run.spec.backend.type].cleanup(run)
        except Exception:  # best effort: retention does not see it (no workspace recorded)
            log.warning("run %s: cleaning up after its failed launch failed", run.id, exc_info=True)


def _translate(parser: StreamParser, record: Record) -> list[models.EventDraft]:
    if record.kind == "stdout":
        return parser.feed_stdout(record.data)
    if record.kind == "stderr":
        return parser.feed_stderr(record.data)
    if record.kind == "notice":
        return [notice_event(record.data.decode("utf-8", "replace"))]
    if record.kind == "egress":
        return [egress_event(record.data)]
    return []


def egress_event(payload: bytes) -> models.EventDraft:
    """A connection the sandbox's egress proxy refused (``host``, ``port``, ``reason``)."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"reason": payload.decode("utf-8", "replace")[:500]}
    data = {k: body[k] for k in ("host", "port", "reason") if k in body}
    return models.EventDraft(type=models.EventType.sandbox_egress_denied, data=data)


def _summary_fields(parser: StreamParser) -> dict[str, Any]:
    s = parser.summary
    fields: dict[str, Any] = {"usage": s.usage}
    if s.session_id is not None:
        fields["session_id"] = s.session_id
    if s.cost_usd is not None:
        fields["cost_usd"] = s.cost_usd
    if s.num_turns is not None:
        fields["num_turns"] = s.num_turns
    return fields


def _redact(draft: models.EventDraft, redactor: Redactor) -> models.EventDraft:
    if not redactor:
        return draft
    return draft.model_copy(update={"data": redactor.data(draft.data)})
