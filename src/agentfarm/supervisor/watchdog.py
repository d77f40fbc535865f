"""The watchdog's view of a run: what the agent is waiting for, and how long it may be quiet.

Three phases, from the events the run produced so far (replayed after a restart, so the
phase is rebuilt too):

- ``model``: waiting for the model (a request out, or a message begun and not finished). A
  model stream silent for minutes has stalled: ``model_stall_seconds``.
- ``tool``: a tool call was issued and its result not seen yet. A test suite may print
  nothing for half an hour: ``tool_quiet_seconds``.
- ``result``: the agent reported its result; the process should exit now. One that does not
  is ended after ``result_grace_seconds`` and the run finishes on its result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from agentfarm.domain import models
from agentfarm.settings import Settings


class Phase(StrEnum):
    model = "model"
    tool = "tool"
    result = "result"

    @property
    def waiting_for(self) -> str:
        return {
            Phase.model: "waiting for the model",
            Phase.tool: "while a tool ran",
            Phase.result: "after its result",
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
        return {Phase.model: self.model, Phase.tool: self.tool, Phase.result: self.result}[phase]


#: What says the agent is working on a turn again (a follow-up starts a new one).
_NEW_TURN = frozenset(
    {models.EventType.agent_text, models.EventType.agent_thinking, models.EventType.user_message}
)


@dataclass
class Tracker:
    """Follows a run's events and says its phase."""

    open_tools: set[str] = field(default_factory=set)
    answered: bool = False

    def feed(self, drafts: Iterable[models.EventDraft]) -> None:
        for draft in drafts:
            kind = draft.type
            if kind == models.EventType.agent_result:
                self.answered = True
                self.open_tools.clear()
            elif kind == models.EventType.agent_tool_call:
                self.answered = False
                self.open_tools.add(str(draft.data.get("id")))
            elif kind == models.EventType.agent_tool_result:
                self.open_tools.discard(str(draft.data.get("id")))
            elif kind in _NEW_TURN:
                self.answered = False

    @property
    def phase(self) -> Phase:
        if self.answered:
            return Phase.result
        return Phase.tool if self.open_tools else Phase.model
