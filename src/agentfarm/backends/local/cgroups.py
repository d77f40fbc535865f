"""Resource limits for one run through cgroups, v1 (per-controller hierarchies) or v2.

The monitor creates the run's groups, the launcher child joins them between fork and exec
(:meth:`RunCgroup.join`), and the monitor watches the OOM counter, since v1 has neither
``memory.oom.group`` nor ``cgroup.kill``: when the kernel OOM-kills a process of the run,
the monitor tears the whole sandbox down and reports ``oom_killed``. Without root, the groups
go under a cgroup v2 subtree the host delegated to the server's user, where there is one
(:func:`delegated`). Where a limit cannot be set (not root and nothing delegated, no
controller), the run goes on and :attr:`RunCgroup.notices` says which limit is not enforced
and why. Blocking file I/O: monitor-side only.

A CPU weight (:attr:`Limits.cpu_weight`, in cgroup v2 units: 100 is the default every group
has) goes on the parent group of all runs, so that the agents together weigh that much
against the control plane when the CPU is short (on v1, ``cpu.shares`` scaled from 1024); the
runs share it equally. It is best effort: where it cannot be set, the monitor's nice value
(``priority.niceness``) is what lowers the agents, and no notice is given.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "agentfarm"
CPU_PERIOD_US = 100_000
#: cgroup v2's default ``cpu.weight`` and v1's default ``cpu.shares``: the same priority.
DEFAULT_WEIGHT = 100
V1_SHARES_PER_WEIGHT = 1024 / DEFAULT_WEIGHT


@dataclass(frozen=True)
class Limits:
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None
    #: The weight of all runs together against the control plane (None: the default, 100).
    cpu_weight: int | None = None

    def wanted(self) -> dict[str, str]:
        """Controller -> human description of the limit asked for."""
        out = {}
        if self.memory_mb is not None:
            out["memory"] = f"memory limit ({self.memory_mb} MiB)"
        if self.cpus is not None:
            out["cpu"] = f"CPU limit ({self.cpus:g} cores)"
        if self.pids is not None:
            out["pids"] = f"process limit ({self.pids})"
        return out


@dataclass
class RunCgroup:
    version: int | None = None
    #: The groups' directories (one per controller on v1, one on v2).
    dirs: list[Path] = field(default_factory=list)
    memory_dir: Path | None = None
    pids_dir: Path | None = None
    notices: list[str] = field(default_factory=list)

    def join(self) -> None:
        """Move the calling process into every group (in the child, before exec)."""
        pid = str(os.getpid()).encode()
        for directory in self.dirs:
            fd = os.open(directory / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this run so far."""
        if self.memory_dir is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (self.memory_dir / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def oom_notifier(self) -> int | None:
        """A descriptor that becomes readable when the run's memory group runs out of memory
        (cgroup v1: an eventfd registered on ``memory.oom_control``), so the monitor need not
        poll the counter; None where there is none (v2, no memory group): poll then."""
        if self.version != 1 or self.memory_dir is None:
            return None
        try:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except (OSError, AttributeError):
            return None
        try:
            ofd = os.open(self.memory_dir / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                (self.memory_dir / "cgroup.event_control").write_text(f"{efd} {ofd}")
            finally:
                os.close(ofd)
        except OSError:
            os.close(efd)
            return None
        return efd

    def forks_refused(self) -> int:
        """How many forks the process limit refused in this run so far (``pids.events``)."""
        if self.pids_dir is None:
            return 0
        try:
            text = (self.pids_dir / "pids.events").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
        return 0

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        return found

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill whatever is left in the groups, then remove them."""
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            kill = next(
                (d / "cgroup.kill" for d in self.dirs if (d / "cgroup.kill").exists()), None
            )
            if kill is not None:
                with contextlib.suppress(OSError):
                    kill.write_text("1")
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        for directory in self.dirs:
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the last member is still being reaped


#: Why nothing is limited when the server is not root and the host delegates nothing to it.
NO_DELEGATION = (
    "the server does not run as root and the host delegates no writable cgroup v2 subtree "
    "to its user"
)


def own_group_procs(root: Path = ROOT, *, self_cgroup: str | None = None) -> Path | None:
    """The ``cgroup.procs`` of this process's own group in one hierarchy (v1 ``pids``,
    ``memory`` or ``cpu``, else v2), or None."""
    if self_cgroup is None:
        self_cgroup = Path("/proc/self/cgroup").read_text()
    groups: dict[str, str] = {}
    for line in self_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller] = path.lstrip("/")
    for controller in ("pids", "memory", "cpu"):
        if controller in groups and (root / controller / "tasks").exists():
            return root / controller / groups[controller] / "cgroup.procs"
    mount = v2_mount(root)
    return None if mount is None or "" not in groups else mount / groups[""] / "cgroup.procs"


def make_ahead(name: str, limits: Limits) -> None:
    """A launch's groups, made by the server as the launch begins (its monitor makes them
    too, finding them there), then :func:`warm_moves`. Blocking: in a thread."""
    with contextlib.suppress(OSError):
        create(name, limits)
    warm_moves()


def warm_moves(root: Path = ROOT) -> None:
    """Start the wait the first move into a cgroup begins with (an RCU grace period, 5-15 ms:
    the kernel's one lock for moves switches to writer mode; moves within a grace period of
    the last one skip it), ahead of a launch's moves: this process moves itself into the
    group it is in, which changes nothing. A move holds the lock that making a group takes
    while it waits: the groups are made first. Blocks for that wait: call it in a thread."""
    with contextlib.suppress(OSError, ValueError):
        procs = own_group_procs(root)
        if procs is not None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)


def v2_mount(root: Path = ROOT) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted: ``root`` itself, or ``unified`` (hybrid)."""
    for mount in (root, root / "unified"):
        if (mount / "cgroup.controllers").exists():
            return mount
    return None


def delegated(
    root: Path = ROOT, *, self_cgroup: str | None = None, uid: int | None = None
) -> Path | None:
    """The nearest cgroup v2 group above this process's own that belongs to ``uid`` (this
    process's by default) and lets it create groups and move processes: a subtree the host
    delegated to the user (systemd does it for user sessions and ``Delegate=yes`` units).
    Its own group is skipped: a group holding processes cannot hand controllers down."""
    mount = v2_mount(root)
    if mount is None:
        return None
    if self_cgroup is None:
        try:
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    own = next((line[3:] for line in self_cgroup.splitlines() if line.startswith("0::")), None)
    if own is None:
        return None
    uid = os.geteuid() if uid is None else uid
    parts = [p for p in own.strip().split("/") if p and p not in (".", "..")]
    for depth in range(len(parts) - 1, 0, -1):  # the mount's root group is never delegated
        candidate = mount.joinpath(*parts[:depth])
        try:
            owner = candidate.stat().st_uid
        except OSError:
            continue
        writable = all(
            os.access(candidate / f, os.W_OK) for f in ("cgroup.procs", "cgroup.subtree_control")
        )
        if owner == uid and writable:
            return candidate
    return None


def create(
    name: str,
    limits: Limits,
    *,
    root: Path = ROOT,
    is_root: bool | None = None,
    self_cgroup: str | None = None,
) -> RunCgroup:
    """The run's groups with ``limits`` set, or a :class:`RunCgroup` with notices only.
    Without root, a delegated cgroup v2 subtree (:func:`delegated`) is used if there is one."""
    wanted = limits.wanted()
    if not wanted and limits.cpu_weight is None:
        return RunCgroup()
    if is_root is None:
        is_root = os.geteuid() == 0
    if not is_root:
        base = delegated(root, self_cgroup=self_cgroup)
        if base is None:
            return RunCgroup(
                notices=[_not_enforced(wanted.values(), NO_DELEGATION)] if wanted else []
            )
        return _create_v2(base, name, limits, wanted)
    if (root / "cgroup.controllers").exists():
        return _create_v2(root, name, limits, wanted)
    if (root / "memory" / "tasks").exists() or (root / "pids" / "tasks").exists():
        return _create_v1(root, name, limits, wanted)
    if (root / "unified" / "cgroup.controllers").exists():
        return _create_v2(root / "unified", name, limits, wanted)
    why = f"no cgroup hierarchy at {root}"
    return RunCgroup(notices=[_not_enforced(wanted.values(), why)] if wanted else [])


def _not_enforced(what: object, why: str) -> str:
    items = list(what)  # type: ignore[call-overload]
    return f"{', '.join(items)} not enforced: {why}"


def _create_v1(root: Path, name: str, limits: Limits, wanted: dict[str, str]) -> RunCgroup:
    group = RunCgroup(version=1)
    settings: dict[str, list[tuple[str, str]]] = {}
    if limits.memory_mb is not None:
        value = str(limits.memory_mb * 1024 * 1024)
        # memsw (memory + swap) keeps the limit from being dodged by swapping, where it exists.
        settings["memory"] = [
            ("memory.limit_in_bytes", value),
            ("memory.memsw.limit_in_bytes", value),
        ]
    if limits.cpus is not None:
        quota = str(max(1000, int(limits.cpus * CPU_PERIOD_US)))
        settings["cpu"] = [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", quota)]
    if limits.cpu_weight is not None and (root / "cpu" / "tasks").exists():
        settings.setdefault("cpu", [])
        with contextlib.suppress(OSError):  # best effort (see the module's docstring)
            (root / "cpu" / PARENT).mkdir(exist_ok=True)
            shares = max(2, round(limits.cpu_weight * V1_SHARES_PER_WEIGHT))
            (root / "cpu" / PARENT / "cpu.shares").write_text(str(shares))
    if limits.pids is not None:
        settings["pids"] = [("pids.max", str(limits.pids))]
    # The freezer holds no limit, but a frozen group cannot fork while it is emptied.
    failed: list[str] = []
    for controller, files in settings.items():
        base = root / controller
        if not (base / "tasks").exists():
            failed.append(  # never for the weight alone: it is only asked for if it exists
                f"{wanted[controller]} not enforced: no cgroup v1 {controller} controller"
            )
            continue
        directory = base / PARENT / name
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for filename, value in files:
                path = directory / filename
                if filename == "memory.memsw.limit_in_bytes" and not path.exists():
                    continue
                path.write_text(value)
        except OSError as exc:
            if controller in wanted:
                failed.append(f"{wanted[controller]} not enforced: {exc.strerror or exc}")
            with contextlib.suppress(OSError):
                directory.rmdir()
            continue
        group.dirs.append(directory)
        if controller == "memory":
            group.memory_dir = directory
        if controller == "pids":
            group.pids_dir = directory
    group.notices = failed
    return group


def _create_v2(root: Path, name: str, limits: Limits, wanted: dict[str, str]) -> RunCgroup:
    group = RunCgroup(version=2)
    available = set((root / "cgroup.controllers").read_text().split())
    weighted = limits.cpu_weight is not None and "cpu" in available
    usable = [c for c in wanted if c in available] + (
        ["cpu"] if weighted and "cpu" not in wanted else []
    )
    missing = [wanted[c] for c in wanted if c not in available]
    notices = []
    if missing:
        notices.append(_not_enforced(missing, "the cgroup v2 controller is not available"))
    if not usable:
        return RunCgroup(notices=notices)
    parent = root / PARENT
    directory = parent / name
    try:
        enable = " ".join(f"+{c}" for c in usable if c in wanted)
        if enable:
            (root / "cgroup.subtree_control").write_text(enable)
        parent.mkdir(exist_ok=True)
        if enable:
            (parent / "cgroup.subtree_control").write_text(enable)
        if weighted and limits.cpu_weight is not None:
            weight = max(1, min(10_000, limits.cpu_weight))
            # Best effort (see the module's docstring), apart from the limits: the kernel
            # refuses the cpu controller while, e.g., a realtime process is in the way.
            with contextlib.suppress(OSError):
                for level in (root, parent):
                    (level / "cgroup.subtree_control").write_text("+cpu")
                (parent / "cpu.weight").write_text(str(weight))
        directory.mkdir(exist_ok=True)
        if limits.memory_mb is not None and "memory" in usable:
            (directory / "memory.max").write_text(str(limits.memory_mb * 1024 * 1024))
            with contextlib.suppress(OSError):
                (directory / "memory.swap.max").write_text("0")
        if limits.cpus is not None and "cpu" in usable:
            quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
            (directory / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        if limits.pids is not None and "pids" in usable:
            (directory / "pids.max").write_text(str(limits.pids))
    except OSError as exc:
        with contextlib.suppress(OSError):
            directory.rmdir()
        why = f"cannot set up cgroup v2 ({exc.strerror or exc})"
        failed = [wanted[c] for c in usable if c in wanted]
        return RunCgroup(notices=[*notices, *([_not_enforced(failed, why)] if failed else [])])
    group.dirs.append(directory)
    if "memory" in usable:
        group.memory_dir = directory
    if limits.pids is not None and "pids" in usable:
        group.pids_dir = directory
    group.notices = notices
    return group


def remove_leftovers(name: str, *, root: Path = ROOT) -> None:
    """Kill and remove a run's groups a dead monitor left behind (any version, delegated too)."""
    dirs = [p for p in root.glob(f"*/{PARENT}/{name}") if p.is_dir()]
    dirs += [p for p in (root / PARENT / name,) if p.is_dir()]
    base = delegated(root) if os.geteuid() != 0 else None
    if base is not None and (base / PARENT / name).is_dir():
        dirs.append(base / PARENT / name)
    if dirs:
        RunCgroup(dirs=dirs).destroy()
