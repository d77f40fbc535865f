"""The supervisor's operations on parked runs, mixed into ``Supervisor``: resume one (a person,
now; or its timer, at the reset), stop one, and end one whose next process cannot start. An
ended run a person continues with a new prompt takes the same path (``continuing``).

A parked run has no agent process: its next one is started here, in the same workspace,
branch and HOME, continuing its session (``parking.Parking.launch_spec``), and then followed
by the supervisor's one path after a launch (``_attached``). A parked run that ends without
one has its branch brought home as at any end.

A launch that a restart cut short before its agent process started is made again here too
(``_launch_cut_short``), as are what a failed launch leaves behind (``_discard_failed_launch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentfarm import tasks
from agentfarm.agents.base import StreamParser
from agentfarm.backends.base import Backend, KnowsStart, LaunchInfo, RunHandle
from agentfarm.domain import errors, launch, models
from agentfarm.domain.redact import Redactor
from agentfarm.store import Store
from agentfarm.supervisor import (
    announce,
    continuing,
    credentials,
    dispatch,
    events,
    ingest,
    parking,
)
from agentfarm.supervisor.hub import Hub

log = logging.getLogger(__name__)
#: How long a resume waits for a just-parked run's last process to let go of it: 5 s at most.
WIND_UP_POLLS, WIND_UP_POLL_SECONDS = 100, 0.05


class Resuming:
    store: Store
    backends: dict[str, Backend]
    announcer: announce.Announcer
    hub: Hub
    parking: parking.Parking
    dispatcher: dispatch.Dispatcher
    _tasks: set[asyncio.Task[Any]]
    _stop_requested: set[str]

    if TYPE_CHECKING:  # the supervisor's own (runs.py)

        def _owning(
            self, run: models.Run, status: models.RunStatus, what: str
        ) -> contextlib.AbstractAsyncContextManager[None]: ...

        async def _credentials(self, spec: models.AgentSpec) -> credentials.Credentials: ...

        async def _append(
            self,
            run_id: str,
            drafts: list[models.EventDraft],
            *,
            cursor: int | None = None,
            run_fields: Mapping[str, Any] | None = None,
            final: bool = False,
        ) -> None: ...

        async def _attached(
            self,
            run: models.Run,
            handle: RunHandle,
            info: LaunchInfo,
            command: launch.AgentCommand,
            redactor: Redactor,
        ) -> None: ...

        async def _start_agent(self, run: models.Run) -> None: ...

    async def resume_run(self, run_id: str, prompt: str | None = None) -> models.Run:
        """Resume a parked run now, rather than when its usage limit resets (told ``prompt``,
        else to continue); or, given a ``prompt``, continue an ended one (``continuing``)."""
        run = await self.store.get_run(run_id)
        if run.status in models.CONTINUABLE_STATUSES and prompt:
            return await self._continue_ended(run, prompt)
        if run.status in models.CONTINUABLE_STATUSES:
            raise errors.ConflictError(
                f"run {run_id} has ended ({run.status.value}): only a parked run can be resumed "
                f'as it is; continue an ended one with a new prompt (`agentfarm resume {run_id} "'
                'what to do next"`)'
            )
        if run.status != models.RunStatus.parked:
            raise errors.ConflictError(
                f"run {run_id} is {run.status.value}: only a parked run can be resumed (an ended "
                f"one continued with a new prompt); send a running one a message instead "
                f"(`agentfarm send {run_id}`)"
            )
        await self._resume_parked(run, parking.PERSON, prompt)
        self.parking.release(run)
        return run

    async def _park(self, run: models.Run, parser: StreamParser, ending: ingest.Ending) -> bool:
        """``ingest.Park``: the parking's decision, told to the notification targets."""
        parked = await self.parking.park(run, parser, ending)
        if parked:
            await self.announcer.parked(run.id)
        return parked

    async def _resume_parked(self, run: models.Run, reason: str, prompt: str | None = None) -> None:
        # Just after it parked, the run's last process may still be winding up (its watcher
        # lets go of the run a moment after the status is stored): wait for that, briefly.
        for _ in range(WIND_UP_POLLS):
            if run.id not in self.dispatcher.active:
                break
            await asyncio.sleep(WIND_UP_POLL_SECONDS)
        else:
            raise errors.ConflictError(f"run {run.id} is already being resumed or stopped")
        current = await self.store.get_run(run.id)
        if current.status != models.RunStatus.parked or run.id in self.dispatcher.active:
            raise errors.ConflictError(f"run {run.id} is already being resumed or stopped")
        self.parking.disarm(run.id)
        self.dispatcher.active.add(run.id)
        work = self._continue(run, reason, prompt)
        tasks.spawn(work, name=f"continue-{run.id}", into=self._tasks)

    async def _continue_ended(self, run: models.Run, prompt: str) -> models.Run:
        """An ended run continued by a person: a new agent process in its session, workspace
        and branch, told ``prompt``, as a parked run resumes."""
        refusal = await self.parking.ended_refusal(run)
        continuing.check(run, can_continue=self.parking.can_continue(run), refusal=refusal)
        if run.id in self.dispatcher.active:
            raise errors.ConflictError(f"run {run.id} is still finishing; try again in a moment")
        self.dispatcher.active.add(run.id)
        try:
            await self._append(
                run.id, continuing.drafts(run, prompt), cursor=0, run_fields=continuing.fields(run)
            )
        except errors.StatusConflictError as exc:
            self.dispatcher.release(run.id)
            raise errors.ConflictError(
                f"run {run.id} is {exc.current} now: it was continued or deleted meanwhile"
            ) from None
        current = await self.store.get_run(run.id)
        work = self._continue(current, parking.CONTINUED, prompt, started=True)
        tasks.spawn(work, name=f"continue-{run.id}", into=self._tasks)
        return current

    async def _continue(
        self, run: models.Run, reason: str, prompt: str | None = None, *, started: bool = False
    ) -> None:
        """A parked (or ended, ``started``) run's next agent process: its session continued,
        in its workspace and on its branch."""
        async with self._owning(run, models.RunStatus.failed, "could not resume the run"):
            try:
                if not started:
                    await self._append(
                        run.id,
                        [events.status_event(models.RunStatus.starting, reason=reason)],
                        run_fields={"status": models.RunStatus.starting, "parked_until": None},
                    )
            except errors.StatusConflictError:
                return  # stopped meanwhile
            if reason in (parking.USAGE_LIMIT, parking.PERSON):  # a stall's resume is not told
                await self.announcer.resumed(run, by_person=reason == parking.PERSON)
            creds: credentials.Credentials | None = None
            try:
                creds = await self._credentials(run.spec)
                spec = self.parking.launch_spec(run, reason, creds.require(), prompt)
                handle, info = await self.parking.start_next(run, spec, reason)
            except errors.AgentfarmError as exc:
                redactor = creds.redactor if creds else Redactor()
                # The workspace is there: its branch goes home.
                await self._end_parked(run, models.RunStatus.failed, redactor.text(str(exc)))
                return
            await self._attached(run, handle, info, spec.command, creds.redactor)

    async def _recall_stop(self, run: models.Run) -> None:
        """After a restart: a stop answered while the run had no agent process (its event
        kept) holds; the launch made again or the reattach stops it."""
        recent = await self.store.list_events_before(run.id, before=2**62, limit=50)
        if events.stop_was_asked(recent):
            self._stop_requested.add(run.id)

    async def _launch_cut_short(self, run: models.Run, backend: Backend) -> bool:
        """After a restart: True when the run's launch was cut short before its agent process
        started (it is ``starting`` and its backend started nothing). That launch is made
        again: a fresh run's from a clean slate; a parked or continued run's next process in
        its workspace, as its resume would have."""
        if run.status != models.RunStatus.starting or not isinstance(backend, KnowsStart):
            return False
        if await backend.started(run):
            return False
        note = "agentfarm restarted before the agent started: starting it again"
        await self._append(run.id, [events.notice_event(note)])
        if run.continuation.reason is not None:  # a resume: the workspace holds its work
            await self._continue(run, run.continuation.reason, started=True)
        else:
            await backend.cleanup(run)
            await self._start_agent(run)
        return True

    async def _discard_failed_launch(self, run: models.Run) -> None:
        """A failed launch leaves nothing behind (no branch, no workspace: its error says why)."""
        try:
            await self.backends[run.spec.backend.type].cleanup(run)
        except Exception:  # best effort: retention does not see it (no workspace recorded)
            log.warning("run %s: cleaning up after its failed launch failed", run.id, exc_info=True)

    async def _stop_parked(self, run: models.Run) -> bool:
        """A person's stop of a parked run (True; False when it is not parked): it ends
        ``stopped``, its branch home. Answered once it has ended (at most 30 s): a kill -9 of
        the control plane after the answer must not leave it parked, to resume at the reset."""
        if run.status != models.RunStatus.parked or run.id in self.dispatcher.active:
            return False
        self.parking.disarm(run.id)
        self.dispatcher.active.add(run.id)
        stopping = self._end_parked(run, models.RunStatus.stopped, "stopped while parked")
        ending = tasks.spawn(stopping, name=f"unpark-{run.id}", into=self._tasks)
        with contextlib.suppress(Exception):  # a failure is logged by the task itself
            await asyncio.wait_for(asyncio.shield(ending), 30)
        return True

    async def _end_parked(self, run: models.Run, status: models.RunStatus, error: str) -> None:
        """End a run between agent processes: its branch is brought home, as at any end."""
        async with self._owning(run, status, "ending the parked run"):
            creds: credentials.Credentials | None = None
            with contextlib.suppress(errors.ConfigurationError, errors.InvalidInputError):
                creds = await self._credentials(run.spec)
            redactor = creds.redactor if creds else Redactor()
            await self.parking.end(run, status, error, creds.git_auth if creds else None, redactor)
            self._stop_requested.discard(run.id)
            self.hub.forget(run.id)
