"""A run's events: the normalized stream every agent's output becomes, stored and served.

An event's ``data`` is encoded as JSON once (``EventDraft.data_json``) and that text is what the
store keeps, the hub counts and the SSE stream sends (``event_json``): an event crosses the
control plane at thousands per second, and encoding it three times was a good part of its cost.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

import pydantic_core
from pydantic import BaseModel, Field

from agentfarm.domain import errors


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


#: For data pydantic cannot write as UTF-8 (lone surrogates): ASCII escapes, valid JSON.
_ASCII = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
#: Where ``data_json`` keeps its text: a key of the instance's ``__dict__`` that is not a field,
#: as ``functools.cached_property`` does (pydantic leaves such keys out of comparisons and dumps).
_CACHE = "_data_json"


def encode_data(data: dict[str, Any]) -> str:
    """``data`` as compact JSON text, exactly as pydantic writes it inside the event's
    ``model_dump_json`` (so ``event_json`` is byte for byte the model's JSON). Strings with lone
    surrogates (an agent's JSON may hold ``"\\ud800"``) cannot be UTF-8: such data is written with
    ASCII escapes instead, which JSON readers decode to the same value."""
    try:
        return pydantic_core.to_json(data, inf_nan_mode="null").decode()
    except pydantic_core.PydanticSerializationError:
        pass
    try:
        return _ASCII.encode(data)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidInputError(
            f"cannot store event data that is not JSON ({exc}); "
            "event data must hold only strings, numbers, booleans, null, lists and objects"
        ) from exc


class EventDraft(BaseModel):
    """An event before the store gives it its sequence number."""

    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    ts: datetime = Field(default_factory=_utcnow)

    def data_json(self) -> str:
        """``data`` as JSON (``encode_data``), encoded once. The text is kept with the dict it
        encodes, so a copy with other data (``model_copy(update={"data": ...})``) encodes its
        own; events are never changed in place."""
        cached: tuple[dict[str, Any], str] | None = self.__dict__.get(_CACHE)
        if cached is None or cached[0] is not self.data:
            cached = (self.data, encode_data(self.data))
            self.__dict__[_CACHE] = cached
        return cached[1]

    def with_data_json(self, text: str) -> Self:
        """This event, its ``data`` known to be encoded as ``text`` (by ``encode_data``, or read
        back from the store): trusted text only, it is served as it is."""
        self.__dict__[_CACHE] = (self.data, text)
        return self


class Event(EventDraft):
    run_id: str
    seq: int


def event_json(event: Event) -> str:
    """``event.model_dump_json()``, with its data's JSON encoded once (``data_json``)."""
    return (
        f'{{"type":{_json(event.type)},"data":{event.data_json()},"ts":{_json(event.ts)},'
        f'"run_id":{_json(event.run_id)},"seq":{event.seq}}}'
    )


def _json(value: Any) -> str:
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError:  # lone surrogates (a type read back)
        return _ASCII.encode(value)
