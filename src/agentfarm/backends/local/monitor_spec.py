"""What the local backend tells a run's monitor, and where the monitor keeps its files.

The spec carries the supervisor's :class:`~agentfarm.domain.launch.LaunchSpec` unchanged (the
agent's command and credentials) plus how this host runs it: the resolved binary, the run's
directories, the sandbox's binds, uid and limits, and the network policy. It crosses the
process boundary once, as JSON on the monitor's stdin (never on disk or in argv: it holds the
credentials). Standard library only: the monitor runs ``python -S``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from agentfarm.backends.local import cgroups, egress, sandbox
from agentfarm.domain import launch

#: Files of a run directory the monitor writes.
SPOOL = "spool"
MONITOR_JSON = "monitor.json"
MONITOR_LOG = "monitor.log"
#: The sandbox's processes (bubblewrap and its namespace init) with their start times: if the
#: monitor dies, the control plane kills them (bubblewrap's --die-with-parent does not cover
#: the namespace init once it has changed credentials in its user namespace).
SANDBOX_JSON = "sandbox.json"
CONTROL_SOCK = "control.sock"

USR_LINKS = ("bin", "lib", "lib64", "sbin")


def write_json(dirfd: int, name: str, value: object) -> None:
    """Write ``name`` in the run directory atomically (a reader sees all of it or nothing).

    Not synced to disk: these files name live processes (the monitor, the sandbox), which an
    OS crash takes with it; a server that restarts after a crash of its own finds them in the
    page cache, and a reader takes a file that is missing or empty for no process (and checks
    a process's start time besides). A sync cost the monitor's start about a millisecond."""
    body = json.dumps(value).encode()
    tmp = f"{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=dirfd)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)


@dataclass(frozen=True)
class MonitorSpec:
    run_dir: str
    mode: str
    launch: launch.LaunchSpec
    #: The agent's binary, resolved on this host (``launch.command.argv[0]`` is its name).
    program: str
    workspace: str
    home: str
    passwd: str
    group: str
    #: ``none`` (no network at all), ``allowlist`` (only through the egress proxy) or ``open``.
    network: str
    limits: cgroups.Limits
    cgroup_name: str
    uid: int | None = None
    gid: int | None = None
    etc: tuple[str, ...] = ()
    #: /etc entries made symlinks inside, as (name, target) (``sandbox.etc_entries``).
    etc_links: tuple[tuple[str, str], ...] = ()
    binds: tuple[sandbox.Bind, ...] = ()
    bwrap: str = "bwrap"
    usr_links: tuple[str, ...] = USR_LINKS
    #: The egress policy (``Policy.to_json``), for ``network: allowlist``.
    egress_policy: dict[str, Any] | None = field(default=None, repr=False)
    #: The interpreter that runs ``bridge.py`` inside the sandbox.
    python: str = "/usr/bin/python3"
    #: How the sandbox's proxy port reaches the proxy: ``netns`` (root only), ``bridge`` or
    #: ``auto`` (``netns`` when the monitor drops to a sandbox uid, that is runs as root).
    egress_via: str = "auto"
    #: Sent ahead of a pooled clone's claim: the agent starts on the go that follows it
    #: (``handover``); until then everything else is readied.
    gated: bool = False

    @property
    def argv(self) -> list[str]:
        """The agent's command line on this host (its runner first, if it has one)."""
        return self.launch.command.with_program(self.program, self.python)

    @property
    def allowlist(self) -> bool:
        return self.mode != "none" and self.network == "allowlist"

    @property
    def via_netns(self) -> bool:
        if not self.allowlist:
            return False
        return self.egress_via == "netns" or (self.egress_via == "auto" and self.uid is not None)

    @property
    def via_bridge(self) -> bool:
        return self.allowlist and not self.via_netns

    @property
    def egress_socket(self) -> str:
        return os.path.join(self.run_dir, egress.SOCKET_NAME)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "mode": self.mode,
            "launch": self.launch.to_json(),
            "program": self.program,
            "workspace": self.workspace,
            "home": self.home,
            "passwd": self.passwd,
            "group": self.group,
            "network": self.network,
            "limits": asdict(self.limits),
            "cgroup_name": self.cgroup_name,
            "uid": self.uid,
            "gid": self.gid,
            "etc": list(self.etc),
            "etc_links": [list(link) for link in self.etc_links],
            "binds": [[b.source, b.dest, b.writable] for b in self.binds],
            "bwrap": self.bwrap,
            "usr_links": list(self.usr_links),
            "egress_policy": self.egress_policy,
            "python": self.python,
            "egress_via": self.egress_via,
            "gated": self.gated,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MonitorSpec:
        raw = dict(raw)
        raw["launch"] = launch.LaunchSpec.from_json(raw["launch"])
        raw["limits"] = cgroups.Limits(**raw.get("limits", {}))
        raw["binds"] = tuple(sandbox.Bind(*b) for b in raw.get("binds", []))
        raw["etc"] = tuple(raw.get("etc", ()))
        raw["etc_links"] = tuple((str(n), str(t)) for n, t in raw.get("etc_links", ()))
        raw["usr_links"] = tuple(raw.get("usr_links", USR_LINKS))
        if isinstance(raw.get("network"), bool):  # specs written before the policy
            raw["network"] = "open" if raw["network"] else "none"
        return cls(**raw)
