"""The watchdog's view of a run: what the agent is waiting for, and how long it may be quiet.

Its phases, from the events the run produced so far (replayed after a restart, so the
phase is rebuilt too):

- ``starting``: the agent's process (a sandbox, a pod) has printed nothing yet: a start that
  outlasts the longer of the two thresholds below has stalled. Not the model's silence: a
  pod that takes longer than ``model_stall_seconds`` to start has not stalled the model.
- ``model``: waiting for the model (a request out, or a message begun and not finished). A
  model stream silent for minutes has stalled: ``model_stall_seconds``.
- ``tool``: a tool call was issued and its result not seen yet (Claude's ``tool_use``
  without its ``tool_result``; Codex's ``command_execution`` item started and not completed).
  A test suite may print nothing for half an hour: ``tool_quiet_seconds``. The command agent
  has no protocol to tell phases by: it is always in this phase.
- ``result``: the agent reported its result; the process should exit now. One that does not
  is ended after ``result_grace_seconds`` and the run finishes on its result.
- ``waiting``: after its result the agent waits for a follow-up (a ``run.waiting`` event: the
  config's ``followup_window_seconds``, or after an interrupt): quiet on purpose, for that long
  and ``WAITING_GRACE`` more (its stdin is closed at the window's end, and it exits).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from agentfarm.domain import models
from agentfarm.settings import Settings

#: Beyond a follow-up window, how long the agent may stay silent (its stdin closes at the end).
WAITING_GRACE = 60.0


class Phase(StrEnum):
    starting = "starting"
    model = "model"
    tool = "tool"
    result = "result"
    waiting = "waiting"

    @property
    def waiting_for(self) -> str:
        return {
            Phase.starting: "before its first output",
            Phase.model: "waiting for the model",
            Phase.tool: "while a tool ran",
            Phase.result: "after its result",
            Phase.waiting: "after its follow-up window",
        }[self]


@dataclass(frozen=True)
class Limits:
    """Seconds of silence allowed per phase (None: no limit) and resumes after a stall."""

    model: float | None
    tool: float | None
    result: float | None
    stall_resumes: int

    @classmethod
    def of(cls, settings: Settings, spec: models.AgentSpec) -> Limits:
        own = spec.watchdog or models.WatchdogSpec()

        def pick(mine: float | None, server: float) -> float | None:
            value = server if mine is None else mine
            return value or None  # 0: never

        return cls(
            model=pick(own.model_stall_seconds, settings.model_stall_seconds),
            tool=pick(own.tool_quiet_seconds, settings.tool_quiet_seconds),
            result=settings.result_grace_seconds or None,
            stall_resumes=settings.stall_resumes
            if own.stall_resumes is None
            else own.stall_resumes,
        )

    def quiet(self, phase: Phase) -> float | None:
        """The limit of a phase; ``waiting``'s is the window's (``Tracker.quiet``)."""
        limits = {
            Phase.starting: self.start,
            Phase.model: self.model,
            Phase.tool: self.tool,
            Phase.result: self.result,
        }
        return limits.get(phase)

    @property
    def start(self) -> float | None:
        """How long an agent may take to print its first line: the longer of the model's and
        the tool's thresholds (None: neither has one)."""
        either = [limit for limit in (self.model, self.tool) if limit is not None]
        return max(either) if either else None


#: What says the agent is working on a turn again (a follow-up starts a new one).
_NEW_TURN = frozenset(
    {models.EventType.agent_text, models.EventType.agent_thinking, models.EventType.user_message}
)

#: ``agent.system`` subtypes that start a turn.
_TURN_START = frozenset({"turn.started"})


@dataclass
class Tracker:
    """Follows a run's events and says its phase. ``output_only``: an agent whose output is
    plain lines (``models.OUTPUT_ONLY_AGENTS``) is always in the tool phase: one threshold,
    ``tool_quiet_seconds``, for its quiet output."""

    open_tools: set[str] = field(default_factory=set)
    answered: bool = False
    #: Seconds of the follow-up window the agent waits in, if it does.
    waiting: float | None = None
    output_only: bool = False
    #: The agent printed something (any ``agent.*`` event): its start is behind it.
    started: bool = False

    @classmethod
    def of(cls, spec: models.AgentSpec) -> Tracker:
        return cls(output_only=spec.agent in models.OUTPUT_ONLY_AGENTS)

    def feed(self, drafts: Iterable[models.EventDraft]) -> None:
        for draft in drafts:
            kind = draft.type
            if kind.startswith("agent."):
                self.started = True
            if kind == models.EventType.run_waiting:
                self.waiting = float(draft.data.get("seconds") or 0)
                continue
            if kind != models.EventType.run_notice:
                self.waiting = None
            if kind == models.EventType.agent_system and draft.data.get("subtype") in _TURN_START:
                self.answered = False  # a new turn (Codex says so before its first item)
            elif kind == models.EventType.agent_result:
                self.answered = True
                self.open_tools.clear()
            elif kind == models.EventType.agent_tool_call:
                self.answered = False
                self.open_tools.add(str(draft.data.get("id")))
            elif kind == models.EventType.agent_tool_result:
                self.open_tools.discard(str(draft.data.get("id")))
            elif kind in _NEW_TURN:
                self.answered = False

    def quiet(self, limits: Limits) -> float | None:
        """How long the agent may be quiet now."""
        if self.waiting is not None:
            return self.waiting + WAITING_GRACE
        return limits.quiet(self.phase)

    @property
    def phase(self) -> Phase:
        if self.waiting is not None:
            return Phase.waiting
        if not self.started:
            return Phase.starting
        if self.output_only:
            return Phase.tool
        if self.answered:
            return Phase.result
        return Phase.tool if self.open_tools else Phase.model
