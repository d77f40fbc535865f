"""Output lines of an agent, as the monitor sees them: split from a byte stream (overlong ones
in pieces), and a JSON line's top-level ``type`` read cheaply."""

from __future__ import annotations

import json
import re

from agentfarm.backends.local.frames import MAX_PAYLOAD

#: Lines longer than this are not parsed for ``type`` beyond the cheap prefix match.
PARSE_LIMIT = 1 << 20
_TYPE_PREFIX = re.compile(rb'^\{\s*"type"\s*:\s*"([^"\\]{1,64})"')


def line_type(line: bytes) -> str | None:
    """The top-level ``type`` of a JSON object line, cheaply (None if not one)."""
    if not line.startswith(b"{"):
        return None
    match = _TYPE_PREFIX.match(line[:256])
    if match:
        return match.group(1).decode(errors="replace")
    if len(line) > PARSE_LIMIT:
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


class LineSplitter:
    """Bytes in, whole lines out (without the newline); overlong lines come in pieces."""

    def __init__(self, limit: int = MAX_PAYLOAD) -> None:
        self.buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end < 0:
                break
            lines.append(bytes(self.buffer[start:end]))
            start = end + 1
        del self.buffer[:start]
        while len(self.buffer) >= self.limit:
            lines.append(bytes(self.buffer[: self.limit]))
            del self.buffer[: self.limit]
        return lines

    def flush(self) -> list[bytes]:
        rest = bytes(self.buffer)
        self.buffer.clear()
        return [rest] if rest else []
