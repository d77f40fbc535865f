"""Daemon processes of the test clusters: start, wait for, stop; nothing Kubernetes-specific."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ClusterError(RuntimeError):
    """A tier could not be started or used; the message says which part and shows its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may take it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the test process goes away, however it ends."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def spawn(
    argv: Sequence[str], log: Path, *, cwd: Path, tie_to_parent: bool
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with a clean environment, output appended to ``log``. With
    ``tie_to_parent`` the kernel kills it if this process dies without tearing down."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={"PATH": PATH_ENV, "HOME": str(cwd)},
            start_new_session=True,
            preexec_fn=_die_with_parent if tie_to_parent else None,
        )


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        # ProcessLookupError: the process went between the open and the read.
        return False


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                found += [
                    int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                ]
    return found


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending += children(current)
    return found


def rss_kib(pid: int) -> int:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of ours; harmless otherwise."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; returns once ``pid`` is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.05)
    reap(pid)


def wait_until(
    what: str,
    check: Callable[[], object],
    timeout: float,
    logs: dict[str, Path],
    watched: dict[str, int],
) -> None:
    """Poll ``check()`` until it is truthy (connection errors and ClusterError: not yet).
    Fails at once when a process in ``watched`` (name -> pid) dies, showing its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException, ClusterError):
            if check():
                return
        for name, pid in watched.items():
            reap(pid)
            if not alive(pid):
                log = tail(logs[name]) if name in logs else "(no log)"
                raise ClusterError(f"{name} exited while waiting for {what}; its log:\n{log}")
        time.sleep(0.1)
    details = "\n".join(f"--- {path}\n{tail(path, 10)}" for path in logs.values())
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{details}")
