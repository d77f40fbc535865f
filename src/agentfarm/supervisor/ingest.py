"""One run's ingest, from its first record to its final status.

A pump task reads the backend's records into a bounded queue; the ingest takes them in
batches, turns them into events with the agent's parser, and stores events and the backend
cursor in one transaction (through the supervisor's ``append``) before they are published.
After a restart the parser is rebuilt by replaying records up to the stored cursor without
storing them again, so no event is lost or doubled. A watchdog (``watchdog``) stops an agent
quiet for longer than its phase allows; the supervisor's ``park`` may then continue the run in
a new process (a stall, a usage limit) instead of ending it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentfarm import tasks
from agentfarm.agents.base import StreamParser
from agentfarm.backends.base import ExitInfo, Record, RunHandle
from agentfarm.domain import models
from agentfarm.domain.redact import Redactor
from agentfarm.settings import Settings
from agentfarm.supervisor import budgets, events, watchdog

log = logging.getLogger(__name__)

BATCH = 500
#: Bytes of agent output waiting between the backend and the ingest, and taken in one batch
#: (a flood of long lines is held in bounded memory, not 4 * BATCH lines of any size).
QUEUE_BYTES = 8 << 20
BATCH_BYTES = 4 << 20
_DONE = object()


class _Pipe:
    """Records from the pump to the ingest, bounded in number and in bytes."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Record | object] = asyncio.Queue(maxsize=4 * BATCH)
        self.bytes = 0
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, item: Record | object) -> None:
        size = len(item.data) if isinstance(item, Record) else 0
        while self.bytes and self.bytes + size > QUEUE_BYTES:
            self._room.clear()
            await self._room.wait()
        self.bytes += size
        await self.queue.put(item)

    def taken(self, item: Record | object) -> int:
        """Say ``item`` left the queue; its size."""
        size = len(item.data) if isinstance(item, Record) else 0
        self.bytes -= size
        self._room.set()  # the pump looks again
        return size


@dataclass(frozen=True)
class Ending:
    """How the agent process ended, as the ingest saw it."""

    info: ExitInfo
    #: The watchdog stopped a stalled agent, in this phase.
    stalled: watchdog.Phase | None = None
    #: The agent reported its result and was ended for not exiting.
    ended_on_result: bool = False


class Park(Protocol):
    """The supervisor's say before a run ends: True when it continues the run instead (parked
    until its usage limit resets, or resumed after a stall)."""

    def __call__(
        self, run: models.Run, parser: StreamParser, ending: Ending
    ) -> Awaitable[bool]: ...


class Append(Protocol):
    """The supervisor's one way to store events (and run fields, a cursor) and publish them."""

    def __call__(
        self,
        run_id: str,
        drafts: list[models.EventDraft],
        *,
        cursor: int | None = None,
        run_fields: dict[str, Any] | None = None,
        final: bool = False,
    ) -> Awaitable[None]: ...


@dataclass
class Ingest:
    run: models.Run
    handle: RunHandle
    parser: StreamParser
    redactor: Redactor
    settings: Settings
    append: Append
    #: Runs a person (or the watchdog) asked to stop: their end is ``stopped``, not ``failed``.
    stop_requested: set[str]
    #: Called once the run has ended and its last events are stored.
    forget: Callable[[str], None]
    tasks: set[asyncio.Task[Any]]
    limits: watchdog.Limits
    park: Park
    stored: int = 0
    #: Why agentfarm stopped a run (a budget), by run id: the error it ends with.
    stop_reasons: dict[str, str] = field(default_factory=dict)
    #: ``over_budget(run_id, reason)``: stop the run, which crossed its dollar or turn budget.
    over_budget: Callable[[str, str], Awaitable[None]] | None = None

    @property
    def pricer(self) -> events.Pricer | None:
        """Agents that report tokens only get their cost estimated from the price table."""
        if self.run.spec.agent not in models.ESTIMATED_COST_AGENTS:
            return None
        return events.Pricer(self.settings.prices(), self.run.spec.model)

    async def run_to_end(self) -> None:
        pipe = _Pipe()
        pump = tasks.spawn(self._pump(pipe), name=f"pump-{self.run.id}", into=self.tasks)
        try:
            ending = await self._follow(pipe)
        finally:
            pump.cancel()
        # A stop a person asked for ends the run; the watchdog's own stop may continue it.
        by_person = self.run.id in self.stop_requested and ending.stalled is None
        if not by_person and await self.park(self.run, self.parser, ending):
            self.stop_requested.discard(self.run.id)
            # Its events are stored and the cursor is back at 0 for the next process: this
            # process's output must not be read again (a restart during the resume would).
            await self._discard_output()
            return
        await self._conclude(ending)

    async def _pump(self, pipe: _Pipe) -> None:
        try:
            async for record in self.handle.records(after=0):
                await pipe.put(record)
        finally:
            await pipe.put(_DONE)

    async def _follow(self, pipe: _Pipe) -> Ending:
        run_id = self.run.id
        exit_info: ExitInfo | None = None
        tracker = watchdog.Tracker.of(self.run.spec)
        fired: watchdog.Phase | None = None
        last_summary: dict[str, Any] = {}
        pricer = self.pricer
        while exit_info is None:
            quiet = None if fired else tracker.quiet(self.limits)
            try:
                # A timer, not a task per batch (wait_for wraps the get in a task).
                async with asyncio.timeout(quiet):
                    item = await pipe.queue.get()
            except TimeoutError:
                fired = tracker.phase
                await self._quiet_too_long(fired, quiet or 0)
                continue
            batch = [item]
            size = pipe.taken(item)
            while len(batch) < BATCH and size < BATCH_BYTES and not pipe.queue.empty():
                batch.append(entry := pipe.queue.get_nowait())
                size += pipe.taken(entry)
            drafts: list[models.EventDraft] = []
            cursor: int | None = None
            for entry in batch:
                if not isinstance(entry, Record):
                    exit_info = exit_info or ExitInfo(
                        exit_code=None, lost=True, error="the backend stopped reporting"
                    )
                    break
                new = events.translate(self.parser, entry, self.redactor)
                tracker.feed(new)
                if pricer is not None:
                    new = [pricer.result(d) for d in new]
                if entry.kind == "exit":
                    exit_info = entry.exit or ExitInfo(exit_code=None)
                if entry.cursor > self.stored:
                    drafts.extend(new)
                    cursor = entry.cursor
            summary = events.summary_fields(self.parser, pricer, base=self.run.continuation)
            fields = summary if summary != last_summary else None
            last_summary = summary
            if drafts or cursor is not None:
                drafts = [events.redact(d, self.redactor) for d in drafts]
                await self.append(run_id, drafts, cursor=cursor, run_fields=fields)
                if cursor is not None:
                    self.stored = max(self.stored, cursor)
            reason = budgets.run_over(self.run.spec, self.parser.summary, summary.get("cost_usd"))
            if reason is not None and self.over_budget is not None and exit_info is None:
                await self.over_budget(run_id, reason)
        if fired in (watchdog.Phase.result, watchdog.Phase.waiting):
            return Ending(exit_info, ended_on_result=True)
        return Ending(exit_info, stalled=fired)

    async def _quiet_too_long(self, phase: watchdog.Phase, quiet: float) -> None:
        if phase in (watchdog.Phase.result, watchdog.Phase.waiting):
            notice = (
                f"the agent reported its result but had not exited {quiet:.0f} s later "
                f"{phase.waiting_for}: ending it; the run finishes on its result"
            )
        else:
            notice = f"no output for {quiet:.0f} s {phase.waiting_for}: stopping the agent"
            self.stop_requested.add(self.run.id)
        await self.append(self.run.id, [events.notice_event(notice)])
        await self.handle.stop(self.settings.stop_grace_seconds)

    async def _conclude(self, ending: Ending) -> None:
        run, handle, info = self.run, self.handle, ending.info
        stopped = info.stopped or (run.id in self.stop_requested and not info.lost)
        if ending.ended_on_result and self.parser.summary.saw_result:
            # Ended for not exiting: the run finishes on what its result said.
            stopped = run.id in self.stop_requested
            outcome = self.parser.finish(0, None, stopped=stopped)
        else:
            outcome = self.parser.finish(
                info.exit_code, info.signal, stopped=stopped, lost=info.lost
            )
        error = outcome.error
        if info.lost and info.error:
            error = f"{error} ({info.error})" if error else info.error
        elif info.error and outcome.status is models.RunStatus.failed:
            # The backend knows why the agent never ran or ended (a failed clone, an image it
            # cannot start, an eviction): that says more than the agent's missing result.
            error = info.error
        if info.oom_killed and outcome.status != models.RunStatus.succeeded:
            error = run.spec.backend.out_of_memory()
        own_budget = budgets.ended_by_own_budget(run.spec, self.parser.summary)
        if outcome.status == models.RunStatus.stopped and run.id in self.stop_reasons:
            error = self.stop_reasons[run.id]
        elif own_budget is not None and not info.lost:
            outcome.status, error = models.RunStatus.stopped, own_budget
        if ending.stalled is not None:
            quiet = self.limits.quiet(ending.stalled) or 0
            error = (
                f"stalled: no output for {quiet:.0f} s {ending.stalled.waiting_for}; "
                "the agent was stopped"
            )
            outcome.status = models.RunStatus.failed
        drafts: list[models.EventDraft] = []
        try:
            drafts += [events.notice_event(n) for n in await handle.finalize()]
        except Exception as exc:  # the run is over either way; say what went wrong
            log.warning("run %s: finalize failed", run.id, exc_info=True)
            drafts.append(events.notice_event(f"bringing the results home failed: {exc}"))
        if handle.branch_outcome is not None:
            drafts.append(events.branch_event(handle.branch_outcome))
        if error:
            error = self.redactor.text(error)
        drafts.append(events.status_event(outcome.status, error=error, exit_code=info.exit_code))
        fields: dict[str, Any] = {
            "status": outcome.status,
            "finished_at": models.utcnow(),
            "exit_code": info.exit_code,
            "error": error,
            "parked_until": None,
            **events.summary_fields(self.parser, self.pricer, base=self.run.continuation),
        }
        redacted = [events.redact(d, self.redactor) for d in drafts]
        await self.append(run.id, redacted, run_fields=fields, final=True)
        self.stop_requested.discard(run.id)
        self.forget(run.id)
        # Every record is stored and the run has ended: the raw output is a second copy.
        await self._discard_output()

    async def _discard_output(self) -> None:
        try:
            await self.handle.discard_output()
        except Exception:  # retention removes it later
            log.warning("run %s: could not remove its raw output", self.run.id, exc_info=True)
