"""Turn events (as JSON dicts from the API) into readable terminal lines."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.text import Text

from agentfarm.domain.present import (
    branch_summary,
    fmt_cost,
    fmt_duration,
    one_line,
    parked_label,
    rate_limit_summary,
    tool_summary,
)

STATUS_STYLE = {
    "queued": "yellow",
    "starting": "yellow",
    "running": "cyan",
    "parked": "blue",
    "succeeded": "green",
    "failed": "red",
    "stopped": "magenta",
    "lost": "red",
}


def event_line(event: dict[str, Any]) -> Text | None:
    kind = event.get("type", "")
    data: dict[str, Any] = event.get("data") or {}
    if kind == "run.status":
        status = str(data.get("status", "?"))
        text = Text.from_markup(f"[bold {STATUS_STYLE.get(status, 'white')}]● {status}[/]")
        if status == "parked":
            text = Text.from_markup(f"[bold blue]● {parked_label(data.get('until'))}[/]")
            text.append(f"  ({str(data.get('reason', '')).replace('_', ' ')})", style="dim")
        if data.get("branch"):
            text.append(f"  branch {data['branch']}", style="dim")
        if data.get("error"):
            text.append(f"  {data['error']}", style="red")
        return text
    if kind == "run.branch":
        template, values, failed = branch_summary(data)
        return Text(f"⎇ {template.format(**values)}", style="red" if failed else "green")
    if kind == "run.notice":
        return Text(f"! {data.get('message', '')}", style="yellow")
    if kind == "sandbox.egress_denied":
        where = f"{data.get('host', '?')}:{data.get('port', '?')}"
        return Text(f"! egress denied: {where} ({data.get('reason', '')})", style="red")
    if kind == "agent.init":
        tools = data.get("tools") or []
        return Text(
            f"session {data.get('session_id', '?')} · model {data.get('model', '?')} · "
            f"{len(tools)} tools",
            style="dim",
        )
    if kind == "agent.text":
        return Text(str(data.get("text", "")))
    if kind == "agent.thinking":
        return Text(one_line(str(data.get("text", "")), 200), style="dim italic")
    if kind == "agent.tool_call":
        summary = tool_summary(str(data.get("name", "?")), data.get("input"))
        return Text.from_markup(f"[bold blue]→[/] {escape(summary)}")
    if kind == "agent.tool_result":
        content = str(data.get("content", ""))
        lines = content.count("\n") + 1 if content else 0
        first = one_line(content.split("\n", 1)[0], 120) if content else ""
        if data.get("is_error"):
            return Text(f"  ✗ {first}", style="red")
        suffix = f" ({lines} lines)" if lines > 1 else ""
        return Text(f"  ✓ {first}{suffix}", style="dim")
    if kind == "agent.result":
        usage = data.get("usage") or {}
        tokens = sum(int(v) for v in usage.values() if isinstance(v, int))
        secs = (data.get("duration_ms") or 0) / 1000
        style = "red" if data.get("is_error") else "green"
        label = "error" if data.get("is_error") else "done"
        cost = fmt_cost(data.get("cost_usd"), bool(data.get("cost_estimated")))
        return Text(
            f"✔ {label}: {data.get('num_turns', '?')} turns · {cost}"
            f" · {tokens} tokens · {fmt_duration(secs)}",
            style=f"bold {style}",
        )
    if kind == "agent.rate_limit":
        said = rate_limit_summary(data)
        return None if said is None else Text(f"! {said}", style="yellow")
    if kind == "agent.stderr":
        return Text(f"stderr: {data.get('line', '')}", style="dim")
    if kind == "agent.unparsed":
        return Text(f"(unparsed output, {data.get('size', '?')} bytes)", style="dim")
    if kind == "run.waiting":
        seconds = float(data.get("seconds") or 0)
        return Text(f"… waiting for a follow-up (ends in {seconds:g} s)", style="cyan")
    if kind == "user.interrupt":
        return Text("> (interrupted the turn)", style="bold")
    if kind == "user.message":
        return Text(f"> {data.get('text', '')}", style="bold")
    if kind == "agent.system":
        return None
    return Text(f"{kind}", style="dim")
