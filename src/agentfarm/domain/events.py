"""A run's events: the normalized stream every agent's output becomes, stored and served."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EventType(StrEnum):
    run_status = "run.status"
    run_notice = "run.notice"
    #: Where the run's branch ended up: {branch, start, head, commits, pushed, error}.
    run_branch = "run.branch"
    agent_init = "agent.init"
    agent_text = "agent.text"
    agent_thinking = "agent.thinking"
    agent_tool_call = "agent.tool_call"
    agent_tool_result = "agent.tool_result"
    agent_result = "agent.result"
    #: The model's usage-limit state as the agent reported it: {status, resets_at, limit_type,
    #: utilization, source}; ``status`` is ``allowed``, ``allowed_warning`` or ``rejected``.
    agent_rate_limit = "agent.rate_limit"
    agent_system = "agent.system"
    agent_stderr = "agent.stderr"
    agent_unparsed = "agent.unparsed"
    user_message = "user.message"
    #: A person interrupted the agent's running turn (the run goes on).
    user_interrupt = "user.interrupt"
    #: A turn ended and the agent waits for a follow-up: {seconds} from the event's time.
    run_waiting = "run.waiting"
    sandbox_egress_denied = "sandbox.egress_denied"


class EventDraft(BaseModel):
    """An event before the store gives it its sequence number."""

    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    ts: datetime = Field(default_factory=_utcnow)


class Event(EventDraft):
    run_id: str
    seq: int
