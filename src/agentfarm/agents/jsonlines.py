"""What every JSON-lines agent CLI's parser shares (pure, no I/O).

Each stdout line is one JSON object: garbage, huge lines, non-UTF-8 bytes and lines the
agent-specific code cannot interpret become ``agent.unparsed`` events (shown, never raised);
each stderr line becomes an ``agent.stderr`` event and is kept in a short tail for the failure
sentence. Plus the small, defensive readers of untrusted JSON values both parsers use.
"""

from __future__ import annotations

import json
import signal as signals
from collections import deque
from typing import Any

from agentfarm.agents import capping
from agentfarm.agents.base import Outcome, Summary
from agentfarm.domain import models

#: Lines longer than this are not parsed at all (they become ``agent.unparsed``).
MAX_PARSE = 32 * 1024 * 1024
#: ``agent.system`` keeps only small fields (their JSON under this many bytes).
MAX_SMALL_FIELD = 2048
#: Stderr lines remembered for the failure sentence.
STDERR_TAIL = 5

#: Fields of system lines that are noise for a person reading the run.
_SYSTEM_SKIP = frozenset({"type", "subtype", "uuid", "session_id"})


class JsonLinesParser:
    """The line handling of a stream parser; a subclass interprets each object in
    :meth:`_dispatch` (which may raise: the line is then shown as unparsed)."""

    def __init__(self) -> None:
        self.summary = Summary()
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL)

    def feed_stdout(self, line: bytes) -> list[models.EventDraft]:
        if not line.strip():
            return []
        if len(line) > MAX_PARSE:
            return [unparsed(line, "line too long to parse")]
        try:
            obj = _DECODER.decode(line.decode("utf-8"))
        except UnicodeDecodeError:
            return [unparsed(line, "not UTF-8")]
        except (ValueError, RecursionError) as exc:
            return [unparsed(line, f"invalid JSON: {str(exc)[:200]}")]
        if not isinstance(obj, dict):
            return [unparsed(line, f"a JSON {type(obj).__name__}, not an object")]
        try:
            return self._dispatch(obj)
        except Exception as exc:  # never crash on a line: show it instead
            return [unparsed(line, f"could not interpret: {type(exc).__name__}: {exc}"[:300])]

    def feed_stderr(self, line: bytes) -> list[models.EventDraft]:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text.strip():
            return []
        text = capping.cap_text(text)[0]
        self._stderr.append(text)
        return [models.EventDraft(type=models.EventType.agent_stderr, data={"line": text})]

    def finish(
        self, exit_code: int | None, signal: int | None, *, stopped: bool, lost: bool = False
    ) -> Outcome:
        if stopped:
            return Outcome(models.RunStatus.stopped)
        if lost:
            return Outcome(
                models.RunStatus.lost,
                "The agent's process was lost (its monitor or pod disappeared) before it "
                "reported an exit status; its output so far is kept.",
            )
        if self._answered():
            if self.summary.result_is_error:
                return Outcome(models.RunStatus.failed, self.summary.result_error)
            return Outcome(models.RunStatus.succeeded)
        return Outcome(models.RunStatus.failed, self._no_result_sentence(exit_code, signal))

    def _answered(self) -> bool:
        """The agent reported how its work ended (a subclass may ask for more)."""
        return self.summary.saw_result

    def _dispatch(self, obj: dict[str, Any]) -> list[models.EventDraft]:
        raise NotImplementedError

    def _no_result_sentence(self, exit_code: int | None, signal: int | None) -> str:
        raise NotImplementedError


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON; letting them through would poison the stored event data.
    raise ValueError(f"{name} is not valid JSON")


#: One decoder for every line (``json.loads`` with an option builds a new one each call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def system_event(obj: dict[str, Any], subtype: str) -> models.EventDraft:
    """``agent.system`` with the line's small fields: enough to show, never huge."""
    data: dict[str, Any] = {"subtype": capping.cap_text(subtype, 200)[0]}
    for key, value in obj.items():
        if key in _SYSTEM_SKIP or key in data:
            continue
        value = capping.cap(value)
        if isinstance(value, dict | list):
            if len(json.dumps(value)) > MAX_SMALL_FIELD:
                continue
        elif isinstance(value, str) and len(value) > MAX_SMALL_FIELD:
            value = capping.cap_text(value, MAX_SMALL_FIELD)[0]
        data[capping.cap_text(str(key), 200)[0]] = value
    return models.EventDraft(type=models.EventType.agent_system, data=data)


def unparsed(line: bytes, reason: str) -> models.EventDraft:
    text, truncated, _ = capping.cap_text(
        line[: capping.MAX_STRING + 16].decode("utf-8", "replace")
    )
    data: dict[str, Any] = {
        "line": text,
        "size": len(line),
        "truncated": truncated or len(line) > capping.MAX_STRING,
        "reason": reason,
    }
    return models.EventDraft(type=models.EventType.agent_unparsed, data=data)
