"""``codex exec --json`` output, line by line, into the same events as Claude Code's.

Facts this module relies on, checked against the pinned CLI (0.169.0; samples in
``tests/data/codex``):

- Lines: ``thread.started {thread_id}``, ``turn.started``, ``item.started|updated|completed
  {item: {id, type, ...}}``, ``turn.completed {usage}``, ``turn.failed {error: {message}}`` and a
  top-level ``error {message}`` just before a ``turn.failed``.
- A ``command_execution`` item is started (``exit_code: null``) and completed (``exit_code``,
  ``aggregated_output``, ``status: completed|failed``); ``agent_message`` items only complete.
- ``error`` *items* are warnings (e.g. unknown model metadata) and the run goes on; a failed turn
  is what fails a run. An HTTP error's body arrives as the message, JSON in a string.
- ``usage.input_tokens`` includes ``cached_input_tokens``; there is no cost, only tokens.
- ``codex exec resume`` is a new process on the same thread: it starts with ``thread.started``
  again, so one parser can read a run's whole spool, every process of it.

Item types the CLI documents but these samples lack (``file_change``, ``mcp_tool_call``,
``web_search``, ``reasoning``, ``todo_list``) follow openai/codex ``docs/exec.md``; anything else
becomes ``agent.system`` with its small fields, never dropped.

Pure and deterministic, like ``claude_stream``: replaying the lines rebuilds the parser."""

from __future__ import annotations

import json
import signal as signals
from collections import deque
from typing import Any

from agentfarm.agents import capping, claude_stream
from agentfarm.agents.base import Outcome, Summary
from agentfarm.domain import models

# The line-level helpers are agent-neutral; they live with the first parser.
_dict, _str, _int = claude_stream._dict, claude_stream._str, claude_stream._int
_system, _unparsed = claude_stream._system, claude_stream._unparsed

EventType = models.EventType


def usage(value: Any) -> models.Usage:
    """Codex's per-turn usage in the shared shape (cached input counted once, as a cache read)."""
    raw = _dict(value)

    def count(name: str) -> int:
        return max(0, _int(raw.get(name)) or 0)

    cached = count("cached_input_tokens")
    return models.Usage(
        input_tokens=max(0, count("input_tokens") - cached),
        output_tokens=count("output_tokens"),
        cache_creation_input_tokens=count("cache_write_input_tokens"),
        cache_read_input_tokens=cached,
    )


def error_message(value: Any) -> str:
    """The readable part of an error message, which may be an API error body as JSON."""
    text = (_str(value) or "").strip()
    try:
        body = json.loads(text) if text.startswith("{") else None
    except ValueError:
        body = None
    error = _dict(_dict(body).get("error"))
    message = _str(error.get("message"))
    if message:
        kind = _str(error.get("code")) or _str(error.get("type"))
        return f"{message} ({kind})" if kind else message
    return text or "no message"


class CodexStreamParser:
    """Turns ``codex exec --json`` lines into event drafts and keeps the run's figures."""

    def __init__(self) -> None:
        self.summary = Summary()
        self._stderr: deque[str] = deque(maxlen=claude_stream.STDERR_TAIL)
        #: Command items whose call was already shown (at ``item.started``).
        self._called: set[str] = set()
        self._turn_open = False
        self._last_text: str | None = None
        self._last_error: str | None = None

    # -- input --

    def feed_stdout(self, line: bytes) -> list[models.EventDraft]:
        if not line.strip():
            return []
        if len(line) > claude_stream.MAX_PARSE:
            return [_unparsed(line, "line too long to parse")]
        try:
            obj = json.loads(line.decode("utf-8"), parse_constant=claude_stream._reject_constant)
        except UnicodeDecodeError:
            return [_unparsed(line, "not UTF-8")]
        except (ValueError, RecursionError) as exc:
            return [_unparsed(line, f"invalid JSON: {str(exc)[:200]}")]
        if not isinstance(obj, dict):
            return [_unparsed(line, f"a JSON {type(obj).__name__}, not an object")]
        try:
            return self._dispatch(obj)
        except Exception as exc:  # never crash on a line: show it instead
            return [_unparsed(line, f"could not interpret: {type(exc).__name__}: {exc}"[:300])]

    def feed_stderr(self, line: bytes) -> list[models.EventDraft]:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text.strip():
            return []
        text = capping.cap_text(text)[0]
        self._stderr.append(text)
        return [models.EventDraft(type=EventType.agent_stderr, data={"line": text})]

    # -- stdout line kinds --

    def _dispatch(self, obj: dict[str, Any]) -> list[models.EventDraft]:
        kind = obj.get("type")
        if kind == "thread.started":
            return [self._thread(obj)]
        if kind == "turn.started":
            self._turn_open = True
            return [_system(obj, "turn.started")]
        if kind == "turn.completed":
            return [self._turn_end(obj, error=None)]
        if kind == "turn.failed":
            return [
                self._turn_end(obj, error=error_message(_dict(obj.get("error")).get("message")))
            ]
        if kind == "error":
            self._last_error = error_message(obj.get("message"))
            return [_system({"message": self._last_error}, "error")]
        if kind in ("item.started", "item.updated", "item.completed"):
            return self._item(str(kind), _dict(obj.get("item")))
        return [_system(obj, str(kind) if kind is not None else "unknown")]

    def _thread(self, obj: dict[str, Any]) -> models.EventDraft:
        thread = _str(obj.get("thread_id"))
        if thread:
            self.summary.session_id = thread
        # The keys Claude's init has, so every page shows both alike; Codex says less.
        data = dict.fromkeys(("model", "cwd", "permission_mode", "version"))
        data.update(session_id=thread, tools=[])
        return models.EventDraft(type=EventType.agent_init, data=data)

    def _item(self, kind: str, item: dict[str, Any]) -> list[models.EventDraft]:
        item_type = _str(item.get("type")) or "unknown"
        item_id = _str(item.get("id")) or ""
        done = kind == "item.completed"
        if item_type == "command_execution":
            drafts = []
            if item_id not in self._called:
                self._called.add(item_id)
                command = _str(item.get("command")) or ""
                drafts.append(_call(item_id, "command", {"command": command}))
            if done:
                drafts.append(_command_result(item_id, item))
            return drafts
        if not done:
            # Progress of other items (a todo list growing, a search running): shown, small.
            return [_system(item, f"{kind}:{item_type}")]
        if item_type in ("agent_message", "reasoning"):
            text = _str(item.get("text")) or ""
            if item_type == "agent_message":
                self._last_text = text
            event = (
                EventType.agent_text if item_type == "agent_message" else EventType.agent_thinking
            )
            data = {"message_id": item_id, "index": 0, "text": capping.cap_text(text)[0]}
            return [models.EventDraft(type=event, data=data)]
        if item_type == "error":
            # A warning: the turn goes on (a failed turn says so itself).
            return [_system({"message": error_message(item.get("message"))}, "warning")]
        if item_type == "file_change":
            changes = [_dict(c) for c in item.get("changes") or [] if isinstance(c, dict)]
            listing = "\n".join(f"{_str(c.get('kind'))} {_str(c.get('path'))}" for c in changes)
            failed = item.get("status") == "failed"
            call = _call(item_id, "file_change", {"changes": changes})
            return [call, _result(item_id, listing, is_error=failed, status=item.get("status"))]
        if item_type == "mcp_tool_call":
            name = f"mcp__{_str(item.get('server'))}__{_str(item.get('tool'))}"
            arguments = item.get("arguments")
            error = _dict(item.get("error")).get("message") or item.get("error")
            output = json.dumps(item.get("result")) if error is None else str(error)
            call = _call(item_id, name, arguments if isinstance(arguments, dict) else {})
            failed = error is not None or item.get("status") == "failed"
            return [call, _result(item_id, output, is_error=failed, status=item.get("status"))]
        if item_type == "web_search":
            return [_call(item_id, "web_search", {"query": _str(item.get("query"))})]
        return [_system(item, f"item:{item_type}")]

    def _turn_end(self, obj: dict[str, Any], *, error: str | None) -> models.EventDraft:
        self._turn_open = False
        turn_usage = usage(obj.get("usage"))
        summary = self.summary
        summary.saw_result = True
        summary.num_turns = (summary.num_turns or 0) + 1
        summary.usage = models.Usage(
            **{
                name: getattr(summary.usage, name) + getattr(turn_usage, name)
                for name in models.Usage.model_fields
            }
        )
        summary.result_is_error = error is not None
        summary.result_error = None if error is None else _failed_sentence(error)
        data: dict[str, Any] = {
            "subtype": "error_turn_failed" if error is not None else "success",
            "is_error": error is not None,
            "result": error if error is not None else self._last_text,
            "cost_usd": None,
            "usage": turn_usage.model_dump(),
            "num_turns": 1,
            "duration_ms": None,
            "duration_api_ms": None,
            "permission_denials": [],
            "terminal_reason": "api_error" if error is not None else "completed",
            "api_error_status": None,
        }
        self._last_text = None
        return models.EventDraft(type=EventType.agent_result, data=capping.cap(data))

    # -- the end --

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
        if self.summary.saw_result and not self._turn_open:
            if self.summary.result_is_error:
                return Outcome(models.RunStatus.failed, self.summary.result_error)
            return Outcome(models.RunStatus.succeeded)
        return Outcome(models.RunStatus.failed, self._no_result_sentence(exit_code, signal))

    def _no_result_sentence(self, exit_code: int | None, signal: int | None) -> str:
        if signal is None and exit_code is not None and exit_code > 128:
            signal = exit_code - 128  # a shell-style status: the process died of a signal
        if signal is not None:
            sentence = (
                f"The agent was killed by {claude_stream._signal_name(signal)} before it "
                "finished its turn."
            )
            if signal == signals.SIGKILL:
                sentence += " SIGKILL usually means the memory limit was hit (sandbox.memory_mb)."
        elif exit_code is None:
            sentence = "The agent ended without an exit status and without finishing its turn."
        else:
            sentence = f"The agent exited with code {exit_code} without finishing its turn."
        if self._last_error:
            sentence += f" Its last error: {self._last_error[:500]}."
        if self._stderr:
            sentence += " Last stderr: " + " | ".join(self._stderr)
        return sentence


def _call(item_id: str, name: str, arguments: dict[str, Any]) -> models.EventDraft:
    data = {"message_id": item_id, "index": 0, "id": item_id, "name": name, "input": arguments}
    return models.EventDraft(type=EventType.agent_tool_call, data=capping.cap(data))


def _result(item_id: str, output: str, *, is_error: bool, **extra: Any) -> models.EventDraft:
    content, truncated, size = capping.cap_text(output)
    data = {"id": item_id, "is_error": is_error, "content": content, "truncated": truncated}
    data.update(size=size, **capping.cap(extra))
    return models.EventDraft(type=EventType.agent_tool_result, data=data)


def _command_result(item_id: str, item: dict[str, Any]) -> models.EventDraft:
    exit_code = _int(item.get("exit_code"))
    failed = item.get("status") == "failed" or (exit_code is not None and exit_code != 0)
    output = _str(item.get("aggregated_output")) or ""
    return _result(item_id, output, is_error=failed, exit_code=exit_code, status=item.get("status"))


def _failed_sentence(message: str) -> str:
    hint = "Check OPENAI_BASE_URL and CODEX_API_KEY, or retry."
    return f"The model API call failed: {message[:500].rstrip('.')}. {hint}"
