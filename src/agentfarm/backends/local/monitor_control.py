"""A run monitor's control socket: ``control.sock`` in the run directory, one JSON object per
line each way. Requests: ``{"op": "ping"}``, ``{"op": "send", "data": <base64>}`` (a follow-up
for the agent's stdin), ``{"op": "interrupt"}`` (end the running turn, not the run) and
``{"op": "stop", "grace": <seconds>}`` (an ``interrupt`` in base64 may replace the one in the
run's command). Replies carry ``ok`` and, when not, an ``error``.

It lives on the monitor's ``selectors`` loop: :meth:`ControlSocket.on_ready` is called for the
keys it registered.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import selectors
import socket
from typing import Any, Protocol

from agentfarm.backends.local import monitor_spec

READ_SIZE = 1 << 16
#: Key data of the listener and of a connection (with its partial line) on the selector.
LISTEN = "control-listen"
CONN = "control-conn"


def bind_private(dirfd: int, name: str) -> tuple[socket.socket, str]:
    """A unix socket bound at ``name`` in the directory ``dirfd`` (replacing a stale one),
    mode 0600, and the path it was bound at. The path goes through the directory descriptor:
    a unix socket path is limited to ~108 bytes."""
    path = f"/proc/self/fd/{dirfd}/{name}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    return listener, path


class Controlled(Protocol):
    """What the control socket asks of the monitor."""

    child_pid: int | None

    def accept_input(self, data: bytes) -> str | None:
        """Queue bytes for the agent's stdin; an error sentence if it cannot take them."""
        ...

    def interrupt_turn(self) -> str | None:
        """End the agent's running turn; an error sentence if it cannot."""
        ...

    def request_stop(self, grace: float, interrupt: bytes | None) -> None: ...


class ControlSocket:
    def __init__(self, sel: selectors.BaseSelector, dirfd: int, target: Controlled) -> None:
        self.sel = sel
        self.dirfd = dirfd
        self.target = target
        self.listener: socket.socket | None = None

    def open(self) -> None:
        listener, _ = bind_private(self.dirfd, monitor_spec.CONTROL_SOCK)
        listener.listen(16)
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, (LISTEN, None))
        self.listener = listener

    def on_ready(self, kind: str, fileobj: Any, buffer: Any) -> None:
        if kind == LISTEN:
            self._accept()
        else:
            self._read(fileobj, buffer)

    def _accept(self) -> None:
        if self.listener is None:
            return
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, (CONN, bytearray()))

    def _read(self, conn: socket.socket, buffer: bytearray) -> None:
        try:
            data = conn.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(conn)
            conn.close()
            return
        buffer += data
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            reply = self.handle(line)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "bad request"}
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "child_pid": self.target.child_pid}
        if op == "send":
            error = self.target.accept_input(base64.b64decode(request.get("data", "")))
            return {"ok": False, "error": error} if error else {"ok": True}
        if op == "interrupt":
            error = self.target.interrupt_turn()
            return {"ok": False, "error": error} if error else {"ok": True}
        if op == "stop":
            given = request.get("interrupt")
            interrupt = base64.b64decode(given) if given is not None else None
            self.target.request_stop(float(request.get("grace", 10.0)), interrupt)
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(monitor_spec.CONTROL_SOCK, dir_fd=self.dirfd)
        if self.listener is not None:
            self.listener.close()
