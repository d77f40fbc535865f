"""Generic capping of parsed JSON for event data: long strings cut with a marker that says
how long they were, deep or huge containers summarised. Used by every agent's parser."""

from __future__ import annotations

from typing import Any

#: Largest string kept in event data (bytes of UTF-8); longer ones are cut with a marker.
MAX_STRING = 64 * 1024
#: Containers deeper or longer than this are summarised rather than copied.
MAX_DEPTH = 24
MAX_ITEMS = 1000


def cap_text(value: str, limit: int = MAX_STRING) -> tuple[str, bool, int]:
    """(``value`` cut to ``limit`` UTF-8 bytes with a marker, truncated?, original size)."""
    if len(value) * 4 <= limit:  # fast path: cannot exceed the limit
        return value, False, len(value.encode("utf-8", "surrogatepass"))
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return value, False, len(raw)
    marker = f"\n… [truncated: {len(raw)} bytes in all]"
    # Reserve room for the marker so the result itself stays within the limit.
    head = raw[: max(0, limit - len(marker.encode()))].decode("utf-8", "ignore")
    return head + marker, True, len(raw)


def cap(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` (parsed JSON) with long strings and huge containers cut down."""
    if isinstance(value, str):
        return cap_text(value)[0]
    if isinstance(value, bool | int | float) or value is None:
        return value
    if depth >= MAX_DEPTH:
        return f"[nested deeper than {MAX_DEPTH} levels]"
    if isinstance(value, list):
        items = [cap(item, depth + 1) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"[{len(value) - MAX_ITEMS} more items]")
        return items
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for count, (key, item) in enumerate(value.items()):
            if count == MAX_ITEMS:
                out["…"] = f"[{len(value) - MAX_ITEMS} more keys]"
                break
            out[cap_text(str(key), 1024)[0]] = cap(item, depth + 1)
        return out
    return cap_text(repr(value))[0]
