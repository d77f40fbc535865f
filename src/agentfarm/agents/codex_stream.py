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
from typing import Any

from agentfarm.agents import capping, jsonlines
from agentfarm.agents.jsonlines import as_dict, as_int, as_str, signal_name, system_event
from agentfarm.domain import models

# The line-level helpers are agent-neutral; they live with the first parser.

EventType = models.EventType


def usage(value: Any) -> models.Usage:
    """Codex's per-turn usage in the shared shape (cached input counted once, as a cache read)."""
    raw = as_dict(value)

    def count(name: str) -> int:
        return max(0, as_int(raw.get(name)) or 0)

    cached = count("cached_input_tokens")
    return models.Usage(
        input_tokens=max(0, count("input_tokens") - cached),
        output_tokens=count("output_tokens"),
        cache_creation_input_tokens=count("cache_write_input_tokens"),
        cache_read_input_tokens=cached,
    )


def error_message(value: Any) -> str:
    """The readable part of an error message, which may be an API error body as JSON."""
    text = (as_str(value) or "").strip()
    try:
        body = json.loads(text) if text.startswith("{") else None
    except ValueError:
        body = None
    error = as_dict(as_dict(body).get("error"))
    message = as_str(error.get("message"))
    if message:
        kind = as_str(error.get("code")) or as_str(error.get("type"))
        return f"{message} ({kind})" if kind else message
    return text or "no message"


#: Items that are tool calls: the model waits for their results before it replies again.
TOOL_ITEMS = frozenset({"command_execution", "file_change", "mcp_tool_call", "web_search"})


class CodexStreamParser(jsonlines.JsonLinesParser):
    """Turns ``codex exec --json`` lines into event drafts and keeps the run's figures."""

    def __init__(self) -> None:
        super().__init__()
        #: Command items whose call was already shown (at ``item.started``).
        self._called: set[str] = set()
        self._turn_open = False
        self._last_text: str | None = None
        self._last_error: str | None = None
        #: Model turns, counted live (``summary.live_turns``, for ``max_turns``): the items of
        #: one model reply follow a turn's start or its tools' results. Tool items running:
        self._open_tools: set[str] = set()
        self._awaiting_model = False

    # -- input --

    def _dispatch(self, obj: dict[str, Any]) -> list[models.EventDraft]:
        kind = obj.get("type")
        if kind == "thread.started":
            return [self._thread(obj)]
        if kind == "turn.started":
            self._turn_open = True
            self._awaiting_model = True
            return [system_event(obj, "turn.started")]
        if kind == "turn.completed":
            return [self._turn_end(obj, error=None)]
        if kind == "turn.failed":
            return [
                self._turn_end(obj, error=error_message(as_dict(obj.get("error")).get("message")))
            ]
        if kind == "error":
            self._last_error = error_message(obj.get("message"))
            return [system_event({"message": self._last_error}, "error")]
        if kind in ("item.started", "item.updated", "item.completed"):
            item = as_dict(obj.get("item"))
            self._count_turn(str(kind), item)
            return self._item(str(kind), item)
        return [system_event(obj, str(kind) if kind is not None else "unknown")]

    def _count_turn(self, kind: str, item: dict[str, Any]) -> None:
        """Codex streams no model requests, only items: the first item after the turn's start
        or after its running tools all completed is a new model reply (tools a reply started
        together complete before the next one)."""
        item_type = as_str(item.get("type"))
        item_id = as_str(item.get("id")) or ""
        if item_type == "error":  # a warning, from Codex rather than the model
            return
        if kind == "item.completed" and item_id in self._open_tools:
            self._open_tools.discard(item_id)
            self._awaiting_model = not self._open_tools
            return
        if self._awaiting_model:
            self.summary.live_turns += 1
            self._awaiting_model = False
        if item_type in TOOL_ITEMS:
            if kind == "item.completed":
                self._awaiting_model = not self._open_tools
            else:
                self._open_tools.add(item_id)

    def _thread(self, obj: dict[str, Any]) -> models.EventDraft:
        thread = as_str(obj.get("thread_id"))
        if thread:
            self.summary.session_id = thread
        # The keys Claude's init has, so every page shows both alike; Codex says less.
        data = dict.fromkeys(("model", "cwd", "permission_mode", "version"))
        data.update(session_id=thread, tools=[])
        return models.EventDraft(type=EventType.agent_init, data=data)

    def _item(self, kind: str, item: dict[str, Any]) -> list[models.EventDraft]:
        item_type = as_str(item.get("type")) or "unknown"
        item_id = as_str(item.get("id")) or ""
        done = kind == "item.completed"
        if item_type == "command_execution":
            drafts = []
            if item_id not in self._called:
                self._called.add(item_id)
                command = as_str(item.get("command")) or ""
                drafts.append(_call(item_id, "command", {"command": command}))
            if done:
                drafts.append(_command_result(item_id, item))
            return drafts
        if not done:
            # Progress of other items (a todo list growing, a search running): shown, small.
            return [system_event(item, f"{kind}:{item_type}")]
        if item_type in ("agent_message", "reasoning"):
            text = as_str(item.get("text")) or ""
            if item_type == "agent_message":
                self._last_text = text
            event = (
                EventType.agent_text if item_type == "agent_message" else EventType.agent_thinking
            )
            data = {"message_id": item_id, "index": 0, "text": capping.cap_text(text)[0]}
            return [models.EventDraft(type=event, data=data)]
        if item_type == "error":
            # A warning: the turn goes on (a failed turn says so itself).
            return [system_event({"message": error_message(item.get("message"))}, "warning")]
        if item_type == "file_change":
            changes = [as_dict(c) for c in item.get("changes") or [] if isinstance(c, dict)]
            listing = "\n".join(f"{as_str(c.get('kind'))} {as_str(c.get('path'))}" for c in changes)
            failed = item.get("status") == "failed"
            call = _call(item_id, "file_change", {"changes": changes})
            return [call, _result(item_id, listing, is_error=failed, status=item.get("status"))]
        if item_type == "mcp_tool_call":
            name = f"mcp__{as_str(item.get('server'))}__{as_str(item.get('tool'))}"
            arguments = item.get("arguments")
            error = as_dict(item.get("error")).get("message") or item.get("error")
            output = json.dumps(item.get("result")) if error is None else str(error)
            call = _call(item_id, name, arguments if isinstance(arguments, dict) else {})
            failed = error is not None or item.get("status") == "failed"
            return [call, _result(item_id, output, is_error=failed, status=item.get("status"))]
        if item_type == "web_search":
            # Completed: the search is done (its result is the model's, not shown).
            call = _call(item_id, "web_search", {"query": as_str(item.get("query"))})
            return [call, _result(item_id, "", is_error=False, status=item.get("status"))]
        return [system_event(item, f"item:{item_type}")]

    def _turn_end(self, obj: dict[str, Any], *, error: str | None) -> models.EventDraft:
        self._turn_open = False
        self._awaiting_model = False
        self._open_tools.clear()
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

    def _answered(self) -> bool:
        return self.summary.saw_result and not self._turn_open

    def _no_result_sentence(self, exit_code: int | None, signal: int | None) -> str:
        if signal is None and exit_code is not None and exit_code > 128:
            signal = exit_code - 128  # a shell-style status: the process died of a signal
        if signal is not None:
            sentence = f"The agent was killed by {signal_name(signal)} before it finished its turn."
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
    exit_code = as_int(item.get("exit_code"))
    failed = item.get("status") == "failed" or (exit_code is not None and exit_code != 0)
    output = as_str(item.get("aggregated_output")) or ""
    return _result(item_id, output, is_error=failed, exit_code=exit_code, status=item.get("status"))


def _failed_sentence(message: str) -> str:
    hint = "Check OPENAI_BASE_URL and CODEX_API_KEY, or retry."
    return f"The model API call failed: {message[:500].rstrip('.')}. {hint}"
