"""How the server hands a run to its monitor, on the monitor's stdin.

A launch that has taken a monitor (``monitors``) writes, one line each:

1. **prepare** (optional): the run's cgroup name and limits. The monitor makes the groups
   (or finds them made: ``cgroups.make_ahead``) while the server still readies the
   workspace.
2. **the spec** (``monitor_spec.MonitorSpec``, JSON). An ungated spec is followed by the end
   of stdin and the monitor starts the agent. A *gated* one is sent once a pooled clone is in
   the run's directory, before it is claimed (its branch made): the monitor readies
   everything (its files, the cgroup, the egress proxy, the launcher child in the groups with
   the workspace staged) and the launcher waits for
3. **go**, written once the workspace is ready, then the end of stdin. Without it (the claim
   failed, or the server died) the launcher gives up, and the monitor removes what it made and
   exits without a spool: no agent of this launch ever ran (``LocalBackend.started``). A
   failed claim's workspace is removed and cloned again at the same path, which that
   launcher staged before: another monitor gets the spec.

The monitor answers on stdout with one line (``report``). Standard library only: the monitor
runs ``python -S``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from agentfarm.backends.local import cgroups, monitor_spec

PREPARE = b'{"prepare": '
GO = b"go\n"
READ_SIZE = 1 << 16


class NotLaunched(Exception):
    """The server let a gated run go before its go: nothing of it may start."""


def prepare_line(name: str, limits: cgroups.Limits) -> bytes:
    return PREPARE + json.dumps({"name": name, "limits": asdict(limits)}).encode() + b"}\n"


def spec_line(spec: monitor_spec.MonitorSpec) -> bytes:
    return json.dumps(spec.to_json()).encode() + b"\n"


@dataclass
class Early:
    """The run's groups, made on the prepare line."""

    name: str
    limits: cgroups.Limits
    cgroup: cgroups.RunCgroup

    def release(self) -> None:
        """The run did not come (or not with these groups): remove them."""
        self.cgroup.destroy(timeout=1.0)


@dataclass
class Received:
    #: The spec's JSON (empty: none came: an idle monitor no run took).
    spec: bytes
    early: Early | None
    #: What came after the spec's line (the go, if it came already).
    rest: bytes


def read(fd: int = 0) -> Received:
    """The prepare line and the spec, read without read-ahead past what came (the launcher
    child reads the go from the same pipe)."""
    buffer = b""
    eof = False

    def line() -> bytes:
        nonlocal buffer, eof
        while b"\n" not in buffer and not eof:
            chunk = os.read(fd, READ_SIZE)
            eof = not chunk
            buffer += chunk
        head, newline, buffer = buffer.partition(b"\n")
        return head + newline

    first = line()
    if not first.startswith(PREPARE):
        return Received(first.rstrip(b"\n"), None, buffer)
    early = None
    try:
        head = json.loads(first)["prepare"]
        name, limits = str(head["name"]), cgroups.Limits(**head["limits"])
        early = Early(name, limits, cgroups.create(name, limits))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # only a head start: the monitor makes the groups with the spec
    spec = line().rstrip(b"\n")
    return Received(spec, early, buffer)


def cgroup_for(early: Early | None, name: str, limits: cgroups.Limits) -> cgroups.RunCgroup:
    """The run's groups: those made ahead if they are the spec's, else made now."""
    if early is not None and (early.name, early.limits) == (name, limits):
        return early.cgroup
    if early is not None:
        early.release()
    return cgroups.create(name, limits)


def wait_for_go(fd: int, rest: bytes) -> None:
    """In the launcher child: block until the go (then the agent starts) or the end of stdin
    without one (:class:`NotLaunched`)."""
    data = rest
    while len(data) < len(GO):
        chunk = os.read(fd, len(GO))
        if not chunk:
            break
        data += chunk
    if not data.startswith(GO):
        raise NotLaunched("the launch was called off before the agent started")


def settle(dirfd: int) -> None:
    """Work in the run's directory and log to its ``monitor.log`` (an idle monitor was started
    before the run had a directory)."""
    os.fchdir(dirfd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    log = os.open(monitor_spec.MONITOR_LOG, flags, 0o600, dir_fd=dirfd)
    os.dup2(log, 2)
    os.close(log)


def report(message: dict[str, Any]) -> None:
    """Tell the launching process how the start went, then let go of its pipe."""
    with contextlib.suppress(OSError):
        os.write(1, json.dumps(message).encode() + b"\n")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
