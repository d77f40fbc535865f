"""Spool frames: the format and the writer (the monitor's side; no heavy imports).

A frame is ``kind (1 byte) | length (4 bytes, big-endian) | payload``. The monitor writes
each frame with one ``write`` on an ``O_APPEND`` descriptor, so a reader sees whole frames
plus at most a torn tail, which it leaves for the next read. The cursor of a frame is the
byte offset just past it. This module imports nothing from the rest of agentfarm, so the
monitor starts fast; the reader is in ``spool.py``.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time
from typing import Literal

#: ``egress``: a JSON object, one connection the egress proxy refused (host, port, reason).
Kind = Literal["stdout", "stderr", "notice", "started", "exit", "egress"]

HEADER = struct.Struct(">cI")
#: Longer payloads (a line without a newline for 64 MiB) are split over several frames.
MAX_PAYLOAD = 64 * 1024 * 1024

KIND_BY_BYTE: dict[bytes, Kind] = {
    b"o": "stdout",
    b"e": "stderr",
    b"n": "notice",
    b"s": "started",
    b"x": "exit",
    b"g": "egress",
}
BYTE_BY_KIND: dict[Kind, bytes] = {kind: byte for byte, kind in KIND_BY_BYTE.items()}


def encode(kind: Kind, payload: bytes) -> list[bytes]:
    """The frames for one payload (one frame unless it exceeds :data:`MAX_PAYLOAD`)."""
    byte = BYTE_BY_KIND[kind]
    chunks = [payload[i : i + MAX_PAYLOAD] for i in range(0, len(payload), MAX_PAYLOAD)]
    return [HEADER.pack(byte, len(chunk)) + chunk for chunk in chunks or [b""]]


def exit_payload(
    exit_code: int | None,
    *,
    signal: int | None = None,
    stopped: bool = False,
    oom_killed: bool = False,
    lost: bool = False,
    error: str | None = None,
) -> bytes:
    body = {
        "exit_code": exit_code,
        "signal": signal,
        "stopped": stopped,
        "oom_killed": oom_killed,
        "lost": lost,
        "error": error,
    }
    return json.dumps(body).encode()


#: The exit frame's error when the spool's disk filled up under the agent's output.
DISK_FULL = (
    "the disk under agentfarm's data directory is full, so the agent's output could no longer "
    "be recorded and the agent was stopped: free space there, then run it again"
)


class SpoolWriter:
    """Appends frames to a spool descriptor (plain blocking writes). On a full disk a record is
    dropped whole (``full`` says so from then on), never left torn before the next one."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.full = False

    def write(self, kind: Kind, payload: bytes = b"") -> bool:
        """Append one record's frames; False: the disk is full and nothing of it was kept."""
        view = memoryview(b"".join(encode(kind, payload)))
        written = 0
        try:
            # A regular file takes it in one write unless the disk is full.
            while written < len(view):
                written += os.write(self.fd, view[written:])
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # The only writer, appending: the record began ``written`` bytes before the end.
            os.ftruncate(self.fd, os.fstat(self.fd).st_size - written)
            self.full = True
            return False
        return True

    def write_exit(self, payload: bytes, wait: float = 120.0) -> None:
        """The exit frame, tried again while the disk is full (the server gives space back
        when it finds it full) for up to ``wait`` seconds; without it the run reads as lost."""
        deadline = time.monotonic() + wait
        while not self.write("exit", payload) and time.monotonic() < deadline:
            time.sleep(0.25)

    def notice(self, text: str) -> None:
        self.write("notice", text.encode())

    def sync(self) -> None:
        os.fsync(self.fd)
