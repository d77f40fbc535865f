"""Egress for ``network: allowlist`` sandboxes, the monitor's side (light imports only).

The sandbox has its own network namespace with nothing but ``lo``. Its HTTP(S)_PROXY points
at a loopback port inside the sandbox, where ``bridge.py`` hands each connection to a unix
socket bound in from the run directory. The proxy behind that socket
(:mod:`agentfarm.backends.local.egress_proxy`) runs outside the sandbox as a child of the
run's monitor, forked here before the agent starts and killed when the monitor finishes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
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


def proxy_env(port: int = SANDBOX_PORT) -> dict[str, str]:
    """The agent's proxy variables: everything, loopback included, goes through the proxy."""
    url = f"http://127.0.0.1:{port}"
    env = dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), url)
    env.update({"NO_PROXY": "", "no_proxy": ""})
    return env


def fork_proxy(listener: socket.socket, policy: dict[str, Any], report_fd: int) -> int:
    """Fork the proxy process (from the single-threaded monitor); returns its pid."""
    pid = os.fork()
    if pid > 0:
        return pid
    code = 0
    try:
        _die_with_parent()
        keep = {2, listener.fileno(), report_fd}
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)  # never hold the launching server's pipe open
        keep.add(devnull)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from agentfarm.backends.local import egress_proxy  # asyncio: only in this process
        from agentfarm.domain.egress import Policy

        egress_proxy.serve_forever(
            listener, Policy.from_json(policy), report_fd, ready=_drop_privileges
        )
    except BaseException as exc:  # a forked child must never return
        with contextlib.suppress(OSError):
            print(f"egress proxy: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    os._exit(code)


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
