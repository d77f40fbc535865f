"""The local backend: one clone and one bubblewrap sandbox per run, watched by a monitor.

``launch`` prepares ``runs/<id>/`` (workspace clone on the run's branch, private
HOME, generated passwd/group), then starts the monitor (``monitor.py``) with the whole spec
on a pipe and returns once the agent has started. Everything here is async; blocking file
work runs in threads.

In a server (between :meth:`LocalBackend.astart` and :meth:`LocalBackend.aclose`) the clone
and the monitor usually come ready-made: ``clone_pool`` keeps clones of each local source
launched lately, ``monitors`` keeps monitors started and waiting for a spec. A launch that
finds no ready clone or monitor makes its own, as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from agentfarm.backends.base import LaunchInfo
from agentfarm.backends.local import (
    binaries,
    cgroups,
    clone_pool,
    exits,
    git,
    hostinfo,
    monitor_spec,
    monitors,
    procs,
    sandbox,
    spoolwatch,
)
from agentfarm.backends.local import diff as local_diff
from agentfarm.backends.local.handle import (
    GIT_STATE,
    LocalHandle,
    kill_orphans,
    monitor_running,
    read_identity,
)
from agentfarm.domain import backend_config, diffs, errors, launch, models
from agentfarm.domain import egress as policies
from agentfarm.domain.launch import GitAuth, LaunchSpec
from agentfarm.settings import Settings

NO_BWRAP = (
    "bubblewrap is not installed: apt-get install bubblewrap "
    "(or set sandbox.mode to none to run unsandboxed)"
)
#: Where the monitor imports agentfarm from: the very code this server runs.
PACKAGE_ROOT = monitors.PACKAGE_ROOT
#: Directories already visible in the sandbox (an agent binary there needs no extra bind).
SYSTEM_PREFIXES = ("/usr/",)


NONE_NOTICE = "the agent has no network (sandbox.network is none), not even its model endpoint"
OPEN_NOTICE = (
    "the agent has the host's network (sandbox.network is open): it can reach this machine's "
    "loopback services, the local network and the control plane's port"
)


def bridge_python() -> tuple[str, list[str]]:
    """The interpreter for ``bridge.py`` inside the sandbox, and directories to bind for it.

    Debian's /usr/bin/python3 is already visible there; without it, the server's own
    interpreter is used and its installation prefix is bound read-only.
    """
    if os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3", []
    prefix = os.path.realpath(sys.base_prefix)
    return os.path.realpath(sys.executable), [] if prefix.startswith("/usr/") else [prefix]


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def find_setpriv() -> str | None:
    return shutil.which("setpriv")


class LocalBackend:
    name = "local"
    #: How the proxy port reaches the egress proxy (see ``egress.py``); tests force ``bridge``.
    egress_via = "auto"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        owner = (settings.sandbox_uid, settings.sandbox_gid) if os.geteuid() == 0 else None
        self.clones = clone_pool.ClonePool(
            settings.data_dir / "pool", settings.local_clone_pool, owner
        )
        self.monitors = monitors.MonitorPool(settings.local_monitor_pool)
        #: One inotify instance for every run's spool reader (see ``spoolwatch``).
        self.watcher = spoolwatch.SpoolWatcher()

    async def astart(self) -> None:
        """At server start: forget pooled clones of an earlier server, start idle monitors."""
        await self.clones.start()
        self.monitors.start()

    async def aclose(self) -> None:
        """At server stop: the pools go, and the shared inotify instance (running agents and
        their monitors stay)."""
        await self.clones.close()
        await self.monitors.close()
        self.watcher.close()

    def run_dir(self, run_id: str) -> Path:
        return self.settings.runs_dir / run_id

    def handle(self, run: models.Run, git_auth: GitAuth | None = None) -> LocalHandle:
        return LocalHandle(run, self.run_dir(run.id), git_auth, self.watcher)

    async def launch(
        self, run: models.Run, spec: launch.LaunchSpec
    ) -> tuple[LocalHandle, LaunchInfo]:
        return await self._start(run, spec, resume=False)

    async def resume(self, run: models.Run, spec: LaunchSpec) -> tuple[LocalHandle, LaunchInfo]:
        """A new agent process for a run whose last one ended (parked for a usage limit, or
        stopped after a stall): the same run directory, workspace, branch and HOME (where
        the agent keeps its session), a new monitor and a new spool."""
        run_dir = self.run_dir(run.id)
        if not await asyncio.to_thread((run_dir / "workspace").is_dir):
            raise errors.LaunchError(
                f"run {run.id} cannot be resumed: its workspace {run_dir / 'workspace'} is gone"
            )
        if await asyncio.to_thread(monitor_running, run_dir):
            raise errors.ConflictError(f"run {run.id} still has an agent running")
        await asyncio.to_thread(_forget_process, run_dir, run.id)
        return await self._start(run, spec, resume=True)

    async def _start(
        self, run: models.Run, spec: LaunchSpec, *, resume: bool
    ) -> tuple[LocalHandle, LaunchInfo]:
        command = spec.command
        box = _sandbox(run)
        bwrap = find_bwrap() if box.mode == "bwrap" else None
        if box.mode == "bwrap" and bwrap is None:
            raise errors.ConfigurationError(NO_BWRAP)
        if not command.argv:
            raise errors.LaunchError("the agent command is empty")
        policy, python, notices = self._network(run, spec.credentials)
        is_root = os.geteuid() == 0
        uid, gid = (
            (self.settings.sandbox_uid, self.settings.sandbox_gid) if is_root else (None, None)
        )
        setpriv = find_setpriv() if is_root else "setpriv"
        if setpriv is None:
            raise errors.ConfigurationError("setpriv is not installed: apt-get install util-linux")
        run_dir = self.run_dir(run.id)
        workspace, home = run_dir / "workspace", run_dir / "home"
        agent = await asyncio.to_thread(binaries.find, command.binary, self.settings)
        branch = spec.branch
        if resume:
            monitor = await self.monitors.take(run_dir, (run.id, self._limits(run)))
            borrowed = await asyncio.to_thread(git.alternates, workspace)
        else:
            monitor, borrowed = await self._new_workspace(run, spec, uid, gid)

        binds: list[sandbox.Bind] = []
        agent_dir = os.path.dirname(agent)
        if not agent.startswith(SYSTEM_PREFIXES):
            binds.append(sandbox.Bind(agent_dir, agent_dir))
        binds += [sandbox.Bind(str(path), str(path)) for path in borrowed]
        usr_links, real_dirs, (etc, etc_links) = await asyncio.to_thread(_root_layout)
        binds = [sandbox.Bind(d, d) for d in real_dirs] + binds
        if box.mode == "bwrap" and (box.network == "allowlist" or command.runner):
            binds += [sandbox.Bind(d, d) for d in python[1]]
        to_monitor = monitor_spec.MonitorSpec(
            run_dir=str(run_dir),
            mode=box.mode,
            launch=spec,
            program=agent,
            workspace=str(workspace),
            home=str(home),
            passwd=str(run_dir / "etc" / "passwd"),
            group=str(run_dir / "etc" / "group"),
            network=box.network,
            egress_policy=policy.to_json(),
            python=python[0],
            egress_via=self.egress_via,
            limits=self._limits(run),
            cgroup_name=run.id,
            uid=uid,
            gid=gid,
            etc=tuple(etc),
            etc_links=tuple(etc_links),
            binds=tuple(binds),
            bwrap=bwrap or "bwrap",
            setpriv=setpriv,
            usr_links=tuple(usr_links),
        )
        await monitors.send_spec(monitor, run_dir, to_monitor)
        notices += hostinfo.run_notices(is_root=is_root)  # no sandbox uid without root
        return self.handle(run, spec.git_auth), LaunchInfo(
            branch=branch, workspace=str(workspace), notices=notices
        )

    async def _new_workspace(
        self, run: models.Run, spec: LaunchSpec, uid: int | None, gid: int | None
    ) -> tuple[asyncio.subprocess.Process, list[Path]]:
        """The run directory, its clone on the run's branch and its HOME; the monitor,
        spawned meanwhile; the paths the clone borrows objects from."""
        run_dir = self.run_dir(run.id)
        workspace, branch = run_dir / "workspace", spec.branch
        await asyncio.to_thread(self._prepare, run_dir, uid, gid)
        # An idle monitor, or one whose interpreter starts while we clone: either way it
        # waits for its spec on stdin.
        monitor = await self.monitors.take(run_dir, (run.id, self._limits(run)))
        try:
            follow_up = launch.continues(run.spec.base_branch, branch)
            pool = None if follow_up else self.clones.key(run.spec.repo, run.spec.base_branch)
            start = None if pool is None else await self.clones.claim(pool, workspace, branch)
            # A claimed clone is the sandbox uid's already (``clone_pool``: owned ahead).
            owned = start is not None and self.clones.owner == (uid, gid)
            if start is None:
                # The clone (and, at the end, the push) runs here, with the token in git's
                # environment only: the sandbox never gets it.
                await git.clone(run.spec.repo, workspace, run.spec.base_branch, spec.git_auth)
                if not follow_up:
                    await git.new_branch(workspace, branch)
                start = await git.head(workspace)
            state = {"branch": branch, "start": start, "continues": follow_up}
            # Side by side: the state is kept outside the workspace, which only chown changes.
            borrowed, _ = await asyncio.gather(
                asyncio.to_thread(_save_git_state, run_dir, workspace, state),
                _chown(f"{uid}:{gid}", workspace) if uid is not None and not owned
                else asyncio.sleep(0),
            )  # fmt: skip
        except BaseException:
            await monitors.abandon(monitor)
            raise
        return monitor, borrowed

    async def attach(
        self, run: models.Run, *, git_auth: GitAuth | None = None
    ) -> tuple[LocalHandle, LaunchInfo]:
        workspace = str(self.run_dir(run.id) / "workspace")
        branch = run.branch or launch.branch_name(run.id)
        return self.handle(run, git_auth), LaunchInfo(branch=branch, workspace=workspace)

    async def started(self, run: models.Run) -> bool:
        """Whether the run's current agent process was started: its monitor makes the spool
        (before anything else, once it has its spec), and only an ended or parked process's
        spool is deleted. Without one (the control plane was killed while cloning or while
        handing the monitor its spec, which then exits on the closed pipe; or while resuming a
        parked run) no agent of this launch ever ran and it may be made again."""
        spool = self.run_dir(run.id) / monitor_spec.SPOOL
        return await asyncio.to_thread(spool.exists)

    async def diff(self, run: models.Run, *, limit: int) -> diffs.RunDiff:
        return await local_diff.run_diff(run, self.run_dir(run.id), limit=limit)

    async def cleanup(self, run: models.Run) -> None:
        run_dir = self.run_dir(run.id)
        identity = await asyncio.to_thread(read_identity, run_dir)
        if identity is not None and await asyncio.to_thread(procs.is_running, *identity):
            # A monitor still going: kill it, and its sandbox dies with it (--die-with-parent).
            procs.kill_quietly(identity[0])
            await exits.exited_within(*identity, 2.0)
        await asyncio.to_thread(kill_orphans, run_dir, run.id)
        await _remove_tree(run_dir)

    # --- helpers ---------------------------------------------------------------------------
    def _limits(self, run: models.Run) -> cgroups.Limits:
        box, weight = _sandbox(run), _cpu_weight(self.settings.local_agent_cpu_weight)
        return cgroups.Limits(box.memory_mb, box.cpus, box.pids, cpu_weight=weight)

    def _network(
        self, run: models.Run, secrets: Mapping[str, str]
    ) -> tuple[policies.Policy, tuple[str, list[str]], list[str]]:
        """The run's egress policy, the bridge's interpreter (and binds it needs), notices."""
        box, repo, agent = _sandbox(run), run.spec.repo, run.spec.agent
        setting, _default = policies.model_endpoint(agent)
        try:
            policy = policies.build_policy(
                box.egress,
                model_url=secrets.get(setting),
                remote=None if git.is_local(repo) else git.strip_credentials(repo),
                control=[(self.settings.host, self.settings.port)],
                agent=agent,
            )
        except ValueError as exc:
            raise errors.ConfigurationError(str(exc)) from None
        python = bridge_python()
        if box.mode == "none":
            return policy, python, []
        if box.network == "open":
            return policy, python, [OPEN_NOTICE]
        if box.network == "none":
            return policy, python, [NONE_NOTICE]
        allowed = ", ".join(policy.describe())
        return policy, python, [f"network: allowlist; the agent may reach {allowed}"]

    def _prepare(self, run_dir: Path, uid: int | None, gid: int | None) -> None:
        self.settings.ensure_dirs()
        if run_dir.exists():
            raise errors.ConflictError(f"run directory {run_dir} already exists")
        run_dir.mkdir(mode=0o711)
        run_dir.chmod(0o711)  # mkdir's mode is masked by the umask
        (run_dir / "home").mkdir(mode=0o700)
        if uid is not None and gid is not None:
            os.chown(run_dir / "home", uid, gid)  # empty: the workspace is handed over later
        etc = run_dir / "etc"
        etc.mkdir(mode=0o755)
        etc.chmod(0o755)
        real_uid, real_gid = (uid, gid) if uid is not None else (os.getuid(), os.getgid())
        (etc / "passwd").write_text(sandbox.passwd_file(real_uid, real_gid or real_uid))
        (etc / "group").write_text(sandbox.group_file(real_gid or real_uid))
        for name in ("passwd", "group"):
            (etc / name).chmod(0o644)


def _sandbox(run: models.Run) -> backend_config.SandboxSpec:
    if not isinstance(run.spec.backend, backend_config.LocalSpec):
        raise errors.ConfigurationError(f"a {run.spec.backend.type} run is not for this backend")
    return run.spec.backend.sandbox


def _root_layout() -> tuple[list[str], list[str], tuple[list[str], list[tuple[str, str]]]]:
    """Top-level names that are symlinks into /usr, real top-level directories to bind, and
    the allowed /etc entries this host has (to bind, and symlinks into /usr to make)."""
    links, dirs = [], []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            if os.readlink(path).lstrip("/").startswith("usr/"):
                links.append(name)
        elif os.path.isdir(path):
            dirs.append(path)
    return links, dirs, sandbox.etc_entries()


def _forget_process(run_dir: Path, run_id: str) -> None:
    """Before a new agent process in an existing run directory: what is left of the last
    one goes (its events are stored; a new spool starts at cursor 0)."""
    kill_orphans(run_dir, run_id)
    for name in (monitor_spec.SPOOL, monitor_spec.MONITOR_JSON, monitor_spec.SANDBOX_JSON):
        (run_dir / name).unlink(missing_ok=True)


def _save_git_state(run_dir: Path, workspace: Path, branch: Mapping[str, object]) -> list[Path]:
    """Keep what the host wrote into .git (restored before host git runs there again), and
    the run's branch: its name, the commit it started from, whether it continues an
    existing branch (outside the workspace: the agent cannot change them)."""
    config = (workspace / ".git" / "config").read_text()
    alternates_file = workspace / ".git" / "objects" / "info" / "alternates"
    alternates = alternates_file.read_text() if alternates_file.exists() else None
    path = run_dir / GIT_STATE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"config": config, "alternates": alternates, **branch}, fh)
    return git.alternates(workspace)


async def _chown(owner: str, *paths: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "chown", "-R", "--no-dereference", owner, *map(str, paths),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise errors.LaunchError(f"cannot hand the workspace to the sandbox user: {err.decode()}")


async def _remove_tree(path: Path) -> None:
    """``rm -rf``: the agent shapes the workspace, and shutil.rmtree recurses once per level
    (a tree nested deeper than Python's recursion limit made it raise). Directories the agent
    made unreadable (a non-root server is their owner, not root) are opened up first."""
    for attempt in range(2):
        if attempt:
            await _run_quietly("chmod", "-R", "u+rwx", "--", str(path))
        err = await _run_quietly("rm", "-rf", "--one-file-system", "--", str(path))
        if err is None:
            return
    raise errors.BackendError(f"cannot remove {path}: {err}")


async def _run_quietly(*argv: str) -> str | None:
    """Run a command; None if it succeeded, else what it said on stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    return None if proc.returncode == 0 else err.decode("utf-8", "replace").strip()


def _cpu_weight(weight: int) -> int | None:
    """The runs' CPU weight, or None at the default (no cgroup is made for it then)."""
    return None if weight == cgroups.DEFAULT_WEIGHT else weight
