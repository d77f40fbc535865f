"""What isolation the local backend gets from this host, said plainly.

As root, every sandbox runs as the dedicated sandbox uid and under cgroup limits. Without
root there is no second uid to switch to: the agent runs as the server's own user (bubblewrap
still hides the host's files, processes and, by default, its network), and limits apply only
where the host delegates a cgroup v2 subtree to that user. The server says so when it starts
(:func:`startup_lines`) and on every run (:func:`run_notices`).
"""

from __future__ import annotations

import os
from pathlib import Path

from agentfarm.backends.local import cgroups


def same_uid_notice(uid: int) -> str:
    return (
        f"the server does not run as root: the agent runs as the server's own user (uid {uid}), "
        "not as a separate sandbox user, so whatever escapes the sandbox acts as the server "
        "(run the server as root for a dedicated sandbox uid)"
    )


def run_notices(*, is_root: bool | None = None, uid: int | None = None) -> list[str]:
    """Notices for every local run (the cgroup limits get their own, from the monitor)."""
    if is_root if is_root is not None else os.geteuid() == 0:
        return []
    return [same_uid_notice(os.geteuid() if uid is None else uid)]


def startup_lines(
    *, is_root: bool | None = None, root: Path = cgroups.ROOT, self_cgroup: str | None = None
) -> list[str]:
    """What the server logs at start about the local backend's isolation (nothing as root)."""
    if is_root if is_root is not None else os.geteuid() == 0:
        return []
    lines = run_notices(is_root=False)
    base = cgroups.delegated(root, self_cgroup=self_cgroup)
    if base is None:
        lines.append(f"no memory, CPU or process limits apply to agents: {cgroups.NO_DELEGATION}")
    else:
        try:
            controllers = (base / "cgroup.controllers").read_text().split() or ["none"]
        except OSError:
            controllers = ["unknown"]
        lines.append(
            f"agent limits use the delegated cgroup v2 subtree {base} "
            f"(controllers: {', '.join(controllers)})"
        )
    return lines
