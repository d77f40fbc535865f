"""Claude Code's stream-json output, line by line, into normalized events.

Facts this module relies on, checked against the pinned CLI (2.1.329):

- ``assistant`` lines carry one content block each and repeat ``message.id``, so a block's
  position is counted per message id.
- One process can answer several user messages (follow-ups); each gets its own ``result``.
  In those, ``total_cost_usd`` is cumulative for the process, while ``usage`` and
  ``num_turns`` cover only that result's turn. The summary therefore takes the latest cost and
  sums usage and turns.
- API failures end in a ``result`` with ``is_error: true`` (even with ``subtype: success``),
  ``terminal_reason: "api_error"`` and ``api_error_status``; max turns end in
  ``subtype: error_max_turns`` with an ``errors`` list and no ``result`` text.

Pure and deterministic: replaying the same lines into a new parser yields the same drafts
(timestamps aside); that is how the supervisor rebuilds it after a restart."""

from __future__ import annotations

import json
import re
import signal as signals
from datetime import UTC, datetime
from typing import Any

from agentfarm.agents import capping, claude_pricing, jsonlines, usage_limit
from agentfarm.agents.jsonlines import as_dict, as_int, as_number, as_str, signal_name, system_event
from agentfarm.domain import models


def _usage(value: Any) -> models.Usage:
    raw = as_dict(value)
    return models.Usage(
        **{name: max(0, as_int(raw.get(name)) or 0) for name in models.Usage.model_fields}
    )


# --- the parser --------------------------------------------------------------------------


class ClaudeStreamParser(jsonlines.JsonLinesParser):
    """Turns Claude Code stream-json lines into event drafts and keeps the run's figures."""

    def __init__(self) -> None:
        super().__init__()
        #: Blocks seen so far per assistant message id (a block's index within its message).
        self._blocks: dict[str, int] = {}
        self._last_result: dict[str, Any] | None = None
        #: Cost of earlier processes, should the stream hold more than one (a resumed agent
        #: starts counting from zero again).
        self._cost_base = 0.0
        self._cost_latest = 0.0
        #: Each assistant message's estimated cost (its lines repeat its usage), and their sum
        #: when the agent last reported its own figure: the estimate adds only what came after.
        self._message_cost: dict[str, float] = {}
        self._estimated_at_result = 0.0

    # -- input --

    def _dispatch(self, obj: dict[str, Any]) -> list[models.EventDraft]:
        kind = obj.get("type")
        session = as_str(obj.get("session_id"))
        if session:
            self.summary.session_id = session
        if kind == "system" and obj.get("subtype") == "init":
            return [self._init(obj)]
        if kind == "assistant":
            return self._assistant(obj)
        if kind == "user":
            if obj.get("isReplay") is True:
                return []  # the echo of a message we sent: the supervisor recorded it
            return self._user(obj)
        if kind == "result":
            result = self._result(obj)
            return [*self._limit_from_text(result.data), result]
        if kind == "rate_limit_event":
            limit = usage_limit.from_event(obj)
            if limit is not None:
                draft = self._rate_limit(limit)
                # Every answer brings one; a plain "allowed" says nothing worth a line.
                return [] if limit.status == "allowed" else [draft]
        subtype = obj.get("subtype") if kind == "system" else kind
        return [system_event(obj, str(subtype) if subtype is not None else "unknown")]

    def _rate_limit(self, limit: usage_limit.Limit) -> models.EventDraft:
        summary = self.summary
        summary.usage_limit = limit if limit.rejected else None
        if limit.status == "allowed_warning":
            summary.limit_warning = limit
        elif limit.status == "allowed":
            summary.limit_warning = None
        return models.EventDraft(type=models.EventType.agent_rate_limit, data=limit.to_data())

    def _limit_from_text(self, data: dict[str, Any]) -> list[models.EventDraft]:
        """The sentence forms, for CLI versions that print no ``rate_limit_event``: only in
        a result that reports an error (an agent may well *write* such a sentence)."""
        if self.summary.usage_limit is not None or not data["is_error"]:
            return []
        if data["api_error_status"] not in (None, 429):
            return []
        limit = usage_limit.from_text(data["result"] or "", datetime.now(UTC))
        return [] if limit is None else [self._rate_limit(limit)]

    def _init(self, obj: dict[str, Any]) -> models.EventDraft:
        tools = obj.get("tools")
        data = {
            "session_id": as_str(obj.get("session_id")),
            "model": as_str(obj.get("model")),
            "tools": [t for t in tools if isinstance(t, str)] if isinstance(tools, list) else [],
            "cwd": as_str(obj.get("cwd")),
            "permission_mode": as_str(obj.get("permissionMode")),
            "version": as_str(obj.get("claude_code_version")),
        }
        return models.EventDraft(type=models.EventType.agent_init, data=capping.cap(data))

    def _assistant(self, obj: dict[str, Any]) -> list[models.EventDraft]:
        message = as_dict(obj.get("message"))
        message_id = as_str(message.get("id")) or ""
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        self._estimate(message_id, message)
        if not isinstance(content, list):
            return [system_event(obj, "assistant")]
        drafts = []
        for block in content:
            index = self._blocks.get(message_id, 0)
            self._blocks[message_id] = index + 1
            drafts.append(_assistant_block(message_id, index, as_dict(block)))
        return drafts

    def _estimate(self, message_id: str, message: dict[str, Any]) -> None:
        """A turn per new message id; its cost from its usage at list prices."""
        if message_id not in self._message_cost:
            self.summary.live_turns += 1
        if "usage" not in message:
            self._message_cost.setdefault(message_id, 0.0)
            return
        cost = claude_pricing.cost(as_str(message.get("model")), _usage(message.get("usage")))
        self._message_cost[message_id] = max(cost, self._message_cost.get(message_id, 0.0))
        since_result = sum(self._message_cost.values()) - self._estimated_at_result
        self.summary.live_cost_usd = (self.summary.cost_usd or 0.0) + since_result

    def _user(self, obj: dict[str, Any]) -> list[models.EventDraft]:
        content = as_dict(obj.get("message")).get("content")
        if not isinstance(content, list):
            # A plain user message (a replayed prompt): the supervisor records what it sent.
            return [system_event(obj, "user")]
        drafts = []
        for block in map(as_dict, content):
            if block.get("type") == "tool_result":
                drafts.append(_tool_result(block))
            elif block.get("type") == "text":
                # e.g. "[Request interrupted by user]" after an interrupt.
                text = capping.cap_text(as_str(block.get("text")) or "")[0]
                drafts.append(
                    models.EventDraft(
                        type=models.EventType.agent_system,
                        data={"subtype": "user_text", "text": text},
                    )
                )
        return drafts

    def _result(self, obj: dict[str, Any]) -> models.EventDraft:
        usage = _usage(obj.get("usage"))
        cost = as_number(obj.get("total_cost_usd"))
        result = as_str(obj.get("result"))
        errors = [e for e in obj.get("errors") or [] if isinstance(e, str)]
        if result is None and errors:
            result = "; ".join(errors)
        data = {
            "subtype": as_str(obj.get("subtype")),
            "is_error": obj.get("is_error") is True,
            "result": result,
            "cost_usd": cost,
            "usage": usage.model_dump(),
            "num_turns": as_int(obj.get("num_turns")),
            "duration_ms": as_int(obj.get("duration_ms")),
            "duration_api_ms": as_int(obj.get("duration_api_ms")),
            "permission_denials": obj.get("permission_denials") or [],
            "terminal_reason": as_str(obj.get("terminal_reason")),
            "api_error_status": as_int(obj.get("api_error_status")),
        }
        data = capping.cap(data)
        self._update_summary(data, usage, cost, as_str(obj.get("api_error_type")), errors)
        return models.EventDraft(type=models.EventType.agent_result, data=data)

    def _update_summary(
        self,
        data: dict[str, Any],
        usage: models.Usage,
        cost: float | None,
        error_type: str | None,
        errors: list[str],
    ) -> None:
        summary = self.summary
        summary.saw_result = True
        summary.result_subtype = data["subtype"]
        if cost is not None:
            if cost < self._cost_latest:  # a new process: its count restarted at zero
                self._cost_base += self._cost_latest
            self._cost_latest = cost
            summary.cost_usd = self._cost_base + cost
            summary.live_cost_usd = summary.cost_usd
            self._estimated_at_result = sum(self._message_cost.values())
        # usage and num_turns are per result (per user message), so they add up.
        summary.usage = models.Usage(
            **{
                name: getattr(summary.usage, name) + getattr(usage, name)
                for name in models.Usage.model_fields
            }
        )
        if data["num_turns"] is not None:
            summary.num_turns = (summary.num_turns or 0) + data["num_turns"]
        summary.result_is_error = data["is_error"] or (data["subtype"] or "").startswith("error")
        summary.result_error = (
            _result_sentence(data, error_type, errors) if summary.result_is_error else None
        )

    # -- the end --

    def _no_result_sentence(self, exit_code: int | None, signal: int | None) -> str:
        if signal is None and exit_code is not None and exit_code > 128:
            signal = exit_code - 128  # a shell-style status: the process died of a signal
        if signal is not None:
            name = signal_name(signal)
            sentence = f"The agent was killed by {name} before it reported a result."
            if signal == signals.SIGKILL:
                sentence += (
                    " SIGKILL usually means the memory limit was hit; raise sandbox.memory_mb "
                    "or give the task less to hold in memory."
                )
        elif exit_code is None:
            sentence = "The agent ended without an exit status and without reporting a result."
        else:
            sentence = f"The agent exited with code {exit_code} without reporting a result."
        if self._stderr:
            sentence += " Last stderr: " + " | ".join(self._stderr)
        return sentence


def _assistant_block(message_id: str, index: int, block: dict[str, Any]) -> models.EventDraft:
    kind = block.get("type")
    if kind == "text" or kind == "thinking":
        text = as_str(block.get("text" if kind == "text" else "thinking")) or ""
        event = models.EventType.agent_text if kind == "text" else models.EventType.agent_thinking
        return models.EventDraft(
            type=event,
            data={"message_id": message_id, "index": index, "text": capping.cap_text(text)[0]},
        )
    if kind == "tool_use":
        data: dict[str, Any] = {
            "message_id": message_id,
            "index": index,
            "id": as_str(block.get("id")),
            "name": as_str(block.get("name")),
            "input": block.get("input") if isinstance(block.get("input"), dict) else {},
        }
        return models.EventDraft(type=models.EventType.agent_tool_call, data=capping.cap(data))
    # Other blocks (redacted_thinking, server tools, ...): show that they happened.
    return models.EventDraft(
        type=models.EventType.agent_system,
        data={
            "subtype": f"assistant_{kind}" if isinstance(kind, str) else "assistant_block",
            "message_id": message_id,
            "index": index,
        },
    )


def _tool_result(block: dict[str, Any]) -> models.EventDraft:
    content, truncated, size = capping.cap_text(_content_text(block.get("content")))
    data = {
        "id": as_str(block.get("tool_use_id")),
        "is_error": block.get("is_error") is True,
        "content": content,
        "truncated": truncated,
        "size": size,
    }
    return models.EventDraft(type=models.EventType.agent_tool_result, data=data)


def _content_text(content: Any) -> str:
    """Tool-result content as one string: text blocks joined, other blocks summarised."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else json.dumps(content)
    parts = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(as_str(block.get("text")) or "")
        elif isinstance(block, dict):
            parts.append(f"[{block.get('type', 'block')}]")
        else:
            parts.append(str(block))
    return "\n".join(parts)


_API_ERROR_PREFIX = re.compile(r"^API Error:\s*(\d{3})?\s*")
_MAX_TURNS = re.compile(r"\((\d+)\)")


def _result_sentence(data: dict[str, Any], error_type: str | None, errors: list[str]) -> str:
    """A sentence a person can act on, for a result that reports an error."""
    subtype = data["subtype"] or ""
    detail = (data["result"] or "").strip()
    status = data["api_error_status"]
    if status is not None or data["terminal_reason"] == "api_error":
        message = _API_ERROR_PREFIX.sub("", detail)[:500] or "no message"
        shown = f"HTTP {status}" if status is not None else "an error"
        kind = f" ({error_type})" if error_type else ""
        if status in (401, 403):
            hint = "Check the credentials (ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN)."
        elif status in (429, 529):
            hint = "The API is rate-limiting or overloaded; retry later."
        else:
            hint = "Check ANTHROPIC_BASE_URL/credentials or retry."
        return f"The model API returned {shown}{kind}: {message.rstrip('.')}. {hint}"
    if subtype == "error_max_turns" or data["terminal_reason"] == "max_turns":
        found = next((m for e in errors if (m := _MAX_TURNS.search(e))), None)
        limit = found.group(1) if found else str(data["num_turns"] or "?")
        return f"Reached max_turns ({limit}) before finishing; raise max_turns or narrow the task."
    if subtype == "error_max_budget_usd":
        return "Reached the cost budget before finishing; raise the budget or narrow the task."
    if subtype == "error_during_execution":
        return (
            f"The agent stopped with an error during execution: {detail[:500] or 'no details'}."
            " See the events before it for the cause."
        )
    return (
        f"The agent reported an error ({subtype or 'no subtype'}): {detail[:500] or 'no details'}."
    )
