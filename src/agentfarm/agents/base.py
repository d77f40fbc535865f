"""The interface every agent CLI adapter implements.

An adapter turns an :class:`~agentfarm.domain.models.AgentSpec` into an
:class:`~agentfarm.domain.launch.AgentCommand` (everything agent-specific about a launch) and
turns the CLI's output, line by line, into normalized events. It does no I/O, so it is
unit-tested on recorded lines, and a parser can be replayed over a spool to rebuild its state
after a restart (it must be deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agentfarm.agents.usage_limit import Limit
from agentfarm.domain import launch, models


@dataclass
class Outcome:
    """How a run ended, decided by the parser from what it saw and the exit status."""

    status: models.RunStatus
    error: str | None = None


@dataclass
class Summary:
    """Figures the parser has collected so far; the supervisor copies them onto the run."""

    session_id: str | None = None
    cost_usd: float | None = None
    usage: models.Usage = field(default_factory=models.Usage)
    num_turns: int | None = None
    saw_result: bool = False
    result_is_error: bool = False
    result_error: str | None = None
    #: The model's usage limit stopped the agent (``usage_limit.Limit``, status rejected).
    usage_limit: Limit | None = None
    #: The usage limit is close (status allowed_warning); cleared when it is not.
    limit_warning: Limit | None = None
    #: The latest result's subtype (``error_max_budget_usd``: the agent's own budget ended it).
    result_subtype: str | None = None
    #: Estimated while the agent streams, before (and between) its own reports: what it has
    #: cost so far (None: no estimate), and how many model turns it has taken.
    live_cost_usd: float | None = None
    live_turns: int = 0


class StreamParser(Protocol):
    summary: Summary

    def feed_stdout(self, line: bytes) -> list[models.EventDraft]:
        """One line of stdout (without its newline; may be partial, huge or garbage)."""
        ...

    def feed_stderr(self, line: bytes) -> list[models.EventDraft]: ...

    def finish(
        self, exit_code: int | None, signal: int | None, *, stopped: bool, lost: bool = False
    ) -> Outcome:
        """The process is gone: decide the run's final status and error sentence."""
        ...


class AgentAdapter(Protocol):
    name: str

    def build_command(
        self, spec: models.AgentSpec, *, base_url: str | None = None
    ) -> launch.AgentCommand:
        """Everything agent-specific about a launch: argv (the binary's name first; the backend
        resolves it), environment, first stdin bytes, how to send a follow-up and how to
        interrupt. Credentials are not in it: the supervisor resolves them and puts them in
        the launch spec beside the command. ``base_url`` is the agent's model endpoint as the
        server is configured (None: the CLI's default), for a CLI that takes it as an option."""
        ...

    def credential_names(self) -> tuple[str, ...]:
        """Environment variables this agent takes credentials from, in order of preference."""
        ...

    def new_parser(self) -> StreamParser: ...


@runtime_checkable
class Resumable(Protocol):
    """An adapter whose agent can continue a session in a new process (after a usage limit
    or a stall): the same command, resuming ``session_id``, with ``prompt`` as the next
    message."""

    def resume_command(
        self, spec: models.AgentSpec, session_id: str, prompt: str
    ) -> launch.AgentCommand: ...
