"""Egress for ``network: allowlist`` sandboxes, the monitor's side (light imports only).

The sandbox has its own network namespace with nothing but ``lo``, and its HTTP(S)_PROXY
points at ``127.0.0.1:3128`` there. The proxy (:mod:`agentfarm.backends.local.egress_proxy`)
runs outside the sandbox as a child of the run's monitor, killed when the monitor finishes.
It is forked ahead of need (:func:`fork_proxy`: by an idle monitor while it waits for its
spec, else before the agent starts), imports and warms up, drops its privileges and waits on
a socket pair; at launch the monitor hands it the run's policy and descriptors
(:func:`hand_over`), so the agent's start no longer competes with the proxy's imports. How the
port reaches it depends on privilege:

- as root (``netns``): the launcher child, between fork and exec, enters a new network
  namespace, brings ``lo`` up, listens on the port there and hands the listening socket to
  the proxy over the same socket pair; bubblewrap then runs in that namespace (without
  ``--unshare-net``). Nothing of the egress path runs inside the sandbox, and the namespace
  belongs to the host's user namespace, so the agent holds no capability over it.
- otherwise (``bridge``): bubblewrap makes the namespace, and ``bridge.py`` inside the sandbox
  listens on the port and forwards each connection to a unix socket bound in from the run
  directory, where the proxy listens. It costs one Python start on the launch path.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

#: The proxy's port on the sandbox's own loopback (each sandbox has its own namespace).
SANDBOX_PORT = 3128
#: The host-side socket's name in the run directory, and where the sandbox sees it.
SOCKET_NAME = "egress.sock"
SANDBOX_SOCKET = "/run/agentfarm/egress.sock"
SANDBOX_BRIDGE = "/run/agentfarm/bridge.py"
#: The proxy drops to ``nobody`` when the monitor runs as root (not the sandbox uid: the
#: agent must not be able to signal or trace it).
PROXY_UID = 65534
BRIDGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bridge.py")

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
PR_SET_NAME = 15
#: The proxy's name in ps (a process name has at most 15 characters).
PROXY_NAME = b"agentfarm-proxy"
#: The running program's symbols (libc included), resolved before any fork.
_libc = ctypes.CDLL(None, use_errno=True)


def proxy_env(port: int = SANDBOX_PORT) -> dict[str, str]:
    """The agent's proxy variables: everything, loopback included, goes through the proxy."""
    url = f"http://127.0.0.1:{port}"
    env = dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), url)
    env.update({"NO_PROXY": "", "no_proxy": ""})
    # Node's own fetch ignores the variables above unless told (Node 22.21+ and 24+).
    env["NODE_USE_ENV_PROXY"] = "1"
    return env


def private_network(channel: socket.socket) -> None:
    """Enter a new network namespace with ``lo`` up, listen on :data:`SANDBOX_PORT` there and
    send the listening socket down ``channel`` to the proxy.

    Only for the root launcher child, between fork and exec: what it execs (bubblewrap) then
    runs in this namespace. Any failure raises, and the agent does not start.
    """
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = b"lo".ljust(16, b"\0") + bytes(24)  # struct ifreq
        flags = struct.unpack_from("H", fcntl.ioctl(probe, SIOCGIFFLAGS, request), 16)[0]
        request = request[:16] + struct.pack("H", flags | IFF_UP) + bytes(22)
        fcntl.ioctl(probe, SIOCSIFFLAGS, request)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", SANDBOX_PORT))
        listener.listen(128)
        socket.send_fds(channel, [b"L"], [listener.fileno()])


def fork_proxy() -> tuple[int, socket.socket]:
    """Fork a proxy that waits for its run (from the single-threaded monitor, an idle one ahead
    of need); returns its pid and the monitor's end of the socket pair it waits on.

    The proxy imports what it needs and warms up, drops its privileges, then blocks on the pair
    until :func:`hand_over` gives it its policy and descriptors; it exits at once, without
    serving, if the pair closes first (a run with another network policy, or none at all).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid > 0:
        theirs.close()
        return pid, ours
    code = 0
    try:
        _die_with_parent()
        keep = {2, theirs.fileno()}
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)  # never hold the launching server's pipes open
        os.dup2(devnull, 1)
        keep.add(devnull)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _libc.prctl(PR_SET_NAME, PROXY_NAME)  # for people reading ps (and tests)
        from agentfarm.backends.local import egress_proxy  # asyncio: only in this process

        egress_proxy.serve_prepared(theirs, ready=_drop_privileges)
    except BaseException as exc:  # a forked child must never return
        with contextlib.suppress(OSError):
            print(f"egress proxy: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    os._exit(code)


@dataclass(frozen=True)
class Handover:
    """What a waiting proxy gets for its run."""

    policy: dict[str, Any]
    report_fd: int
    #: The monitor's log, the proxy's stderr from now on (an idle monitor had none).
    log_fd: int
    #: Bridge mode: the unix listener in the run directory. Netns mode: None, the listener
    #: comes next, from the launcher child (:func:`private_network`, :func:`receive_listener`).
    listener: socket.socket | None


def hand_over(
    channel: socket.socket,
    policy: dict[str, Any],
    report_fd: int,
    log_fd: int,
    listener: socket.socket | None,
) -> None:
    """Give the waiting proxy its run: one message, ``H``, the body's length and the body
    (JSON), carrying the descriptors (SCM_RIGHTS)."""
    body = json.dumps({"policy": policy, "listener": listener is not None}).encode()
    fds = [report_fd, log_fd] + ([listener.fileno()] if listener is not None else [])
    socket.send_fds(channel, [b"H" + struct.pack("!I", len(body)) + body], fds)


def receive_handover(channel: socket.socket) -> Handover | None:
    """The proxy's side of :func:`hand_over`; None if the monitor closed the pair instead."""
    head, fds, _, _ = socket.recv_fds(channel, 5, 3)
    try:
        if not head:
            return None
        head += _receive_exactly(channel, 5 - len(head))
        if head[:1] != b"H":
            raise ValueError("the egress proxy's handover is garbled")
        body = json.loads(_receive_exactly(channel, struct.unpack("!I", head[1:])[0]))
        listener = socket.socket(fileno=fds[2]) if body["listener"] else None
        handover = Handover(body["policy"], fds[0], fds[1], listener)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return handover


def receive_listener(channel: socket.socket) -> socket.socket | None:
    """Netns mode: the listener :func:`private_network` sends; None if the agent never
    started (the launcher child failed before, and the monitor closed the pair)."""
    _, fds, _, _ = socket.recv_fds(channel, 16, 1)
    return socket.socket(fileno=fds[0]) if fds else None


def _receive_exactly(channel: socket.socket, size: int) -> bytes:
    # Exactly: the bytes after these may carry the listener, which only recv_fds may read.
    data = b""
    while len(data) < size:
        chunk = channel.recv(size - len(data))
        if not chunk:
            raise EOFError("the monitor closed the egress proxy's pair mid-handover")
        data += chunk
    return data


def _drop_privileges() -> None:
    """The proxy parses what the agent sends: it needs no privilege, so it keeps none. Called
    once everything is imported and warmed up (the interpreter may live under /root)."""
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(PROXY_UID)
    os.setuid(PROXY_UID)
    _die_with_parent()  # a credential change clears the parent-death signal


def _die_with_parent() -> None:
    parent = os.getppid()
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the monitor died before prctl took effect
        os._exit(1)
