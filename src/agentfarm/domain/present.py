"""How events read for people: shared by the CLI and the cockpit. Pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: The argument that best says what a tool call does, by tool name.
KEY_ARGUMENT = {
    "Bash": "command",
    "Read": "file_path",
    "Write": "file_path",
    "Edit": "file_path",
    "MultiEdit": "file_path",
    "NotebookEdit": "notebook_path",
    "Glob": "pattern",
    "Grep": "pattern",
    "WebFetch": "url",
    "WebSearch": "query",
    "Task": "description",
    "TodoWrite": "todos",
}


def one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def tool_summary(name: str, tool_input: Any, limit: int = 160) -> str:
    """``Bash: git commit -m x`` — the tool and its key argument on one line."""
    if not isinstance(tool_input, dict):
        return name
    key = KEY_ARGUMENT.get(name)
    value = tool_input.get(key) if key else None
    if value is None:
        value = next((v for v in tool_input.values() if isinstance(v, str) and v), None)
    if isinstance(value, list):
        value = f"{len(value)} items"
    if value is None:
        return name
    return f"{name}: {one_line(str(value), limit)}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_cost(cost: float | None, estimated: bool = False) -> str:
    """``$0.1234``; an estimate (from a price table, not the agent) reads ``≈ $0.1234
    (estimate)``."""
    if cost is None:
        return "-"
    return f"≈ ${cost:.4f} (estimate)" if estimated else f"${cost:.4f}"


def fmt_bytes(value: int) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def branch_summary(data: dict[str, Any]) -> tuple[str, dict[str, str], bool]:
    """A ``run.branch`` event as one sentence: a template with ``{branch}``, ``{head}`` and
    ``{error}`` fields (a page sets them apart; a terminal fills them in), its values, and
    whether it says something went wrong."""
    commits = data.get("commits") if isinstance(data.get("commits"), int) else 0
    values = {
        "branch": str(data.get("branch") or "?"),
        "head": str(data.get("head") or "")[:12],
        "error": str(data.get("error") or ""),
    }
    plural = "commit" if commits == 1 else "commits"
    if data.get("error"):
        return f"branch {{branch}} not pushed ({commits} {plural}): {{error}}", values, True
    if not data.get("pushed"):
        return "branch {branch}: no commits, nothing pushed", values, False
    if not commits:
        return "branch {branch}: no new commits, brought home at {head}", values, False
    return f"branch {{branch}}: {commits} {plural} pushed, head {{head}}", values, False


def fmt_time(when: datetime | str, now: datetime | None = None) -> str:
    """``10:10 UTC``; ``Dec 1 10:10 UTC`` when not today."""
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    if when.date() == today:
        return when.strftime("%H:%M UTC")
    return f"{when:%b} {when.day} {when:%H:%M} UTC"


def parked_label(parked_until: datetime | str | None) -> str:
    """A parked run's badge: ``parked until 10:10 UTC``."""
    return "parked" if not parked_until else f"parked until {fmt_time(parked_until)}"


def rate_limit_summary(data: dict[str, Any]) -> str | None:
    """An ``agent.rate_limit`` event as one sentence; None for a plain ``allowed``."""
    status = data.get("status")
    resets = data.get("resets_at")
    when = ""
    if isinstance(resets, int | float) and not isinstance(resets, bool):
        when = f"; resets at {fmt_time(datetime.fromtimestamp(resets, UTC))}"
    if status == "rejected":
        return f"usage limit reached{when}"
    if status == "allowed_warning":
        used = data.get("utilization")
        share = f" ({used:.0%} used)" if isinstance(used, int | float) else ""
        return f"usage limit close{share}{when}"
    return None
