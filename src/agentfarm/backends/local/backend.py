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
import os
import shutil
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

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
    rundir,
    sandbox,
    spoolwatch,
)
from agentfarm.backends.local import diff as local_diff
from agentfarm.backends.local.handle import (
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
        self._making_ahead = False

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
        return await self._groups_ahead(run, self._start(run, spec, resume=False))

    async def _groups_ahead(
        self, run: models.Run, start: Coroutine[Any, Any, tuple[LocalHandle, LaunchInfo]]
    ) -> tuple[LocalHandle, LaunchInfo]:
        """``start``, with the run's cgroups made beside it (``cgroups.make_ahead``). One at
        a time: launches that come together keep the kernel's lock in writer mode anyway, and
        a burst of them must not fill the thread pool (their monitors make the groups too)."""
        try:
            limits = self._limits(run)
        except errors.AgentfarmError:
            limits = cgroups.Limits()  # ``start`` says what is wrong
        if limits == cgroups.Limits() or self._making_ahead:
            return await start
        self._making_ahead = True
        ahead = asyncio.get_running_loop().run_in_executor(None, cgroups.make_ahead, run.id, limits)
        try:
            return await start
        finally:
            try:
                await ahead  # long done; a failed launch's clean-up comes after it
            finally:
                self._making_ahead = False

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
        await asyncio.to_thread(rundir.forget_process, run_dir, run.id)
        return await self._groups_ahead(run, self._start(run, spec, resume=True))

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
        run_dir = self.run_dir(run.id)
        workspace, home = run_dir / "workspace", run_dir / "home"
        limits = self._limits(run)
        pool, entry = (None, None) if resume else self._reserve(run, spec.branch)

        def ahead() -> tuple[str, rundir.Layout, bool]:
            """The agent's binary, the host's layout and (a new run) the run's directory,
            with a pooled clone moved into it: one thread hop."""
            try:
                found = binaries.find(command.binary, self.settings), rundir.root_layout()
                if not resume:
                    self._prepare(run_dir, uid, gid)
            except BaseException:
                if entry is not None:
                    self.clones.discard(entry)
                raise
            return *found, entry is not None and self.clones.place(entry, workspace)

        agent, (usr_links, real_dirs, (etc, etc_links)), placed = await asyncio.to_thread(ahead)

        def for_monitor(borrowed: list[Path], gated: bool) -> monitor_spec.MonitorSpec:
            binds = [sandbox.Bind(d, d) for d in real_dirs]
            agent_dir = os.path.dirname(agent)
            if not agent.startswith(SYSTEM_PREFIXES):
                binds.append(sandbox.Bind(agent_dir, agent_dir))
            binds += [sandbox.Bind(str(path), str(path)) for path in borrowed]
            if box.mode == "bwrap" and (box.network == "allowlist" or command.runner):
                binds += [sandbox.Bind(d, d) for d in python[1]]
            return monitor_spec.MonitorSpec(
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
                limits=limits,
                cgroup_name=run.id,
                uid=uid,
                gid=gid,
                etc=tuple(etc),
                etc_links=tuple(etc_links),
                binds=tuple(binds),
                bwrap=bwrap or "bwrap",
                usr_links=tuple(usr_links),
                gated=gated,
            )

        if resume:
            borrowed = await asyncio.to_thread(git.alternates, workspace)
            monitor = await self.monitors.take(run_dir, (run.id, limits))
            await monitors.send_spec(monitor, run_dir, for_monitor(borrowed, False))
        else:
            claim = (pool, entry) if pool is not None and entry is not None and placed else None
            await self._new_workspace(run, spec, (uid, gid), limits, for_monitor, claim)
        notices += hostinfo.run_notices(is_root=is_root)  # no sandbox uid without root
        return self.handle(run, spec.git_auth), LaunchInfo(
            branch=spec.branch, workspace=str(workspace), notices=notices
        )

    async def _new_workspace(
        self,
        run: models.Run,
        spec: LaunchSpec,
        owner: tuple[int | None, int | None],
        limits: cgroups.Limits,
        for_monitor: Callable[[list[Path], bool], monitor_spec.MonitorSpec],
        claim: tuple[clone_pool.Key, clone_pool.Entry] | None,
    ) -> None:
        """The run's clone on the run's branch (the run directory is made), and its monitor,
        started on them. With a pooled clone (``claim``, moved into place) the monitor gets
        its spec before the claim and readies the agent's start meanwhile; the go follows
        (``handover``)."""
        run_dir = self.run_dir(run.id)
        workspace, branch = run_dir / "workspace", spec.branch
        uid, gid = owner
        follow_up = launch.continues(run.spec.base_branch, branch)
        # An idle monitor, or one whose interpreter starts while we clone: either way it
        # waits for its spec on stdin.
        monitor = await self.monitors.take(run_dir, (run.id, limits))
        handed: list[Path] | None = None  # what a spec sent ahead binds of the source's objects
        try:
            start = None
            if claim is not None:
                handed = claim[1].borrowed
                await monitors.hand_spec(monitor, for_monitor(handed, True))
                start = await self.clones.settle(*claim, workspace, branch)
            pooled = start is not None
            # A claimed clone is the sandbox uid's already (``clone_pool``: owned ahead).
            owned = pooled and self.clones.owner == (uid, gid)
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
                asyncio.to_thread(rundir.save_git_state, run_dir, workspace, state),
                rundir.chown(f"{uid}:{gid}", workspace) if uid is not None and not owned
                else asyncio.sleep(0),
            )  # fmt: skip
            if handed is not None and (not pooled or borrowed != handed):
                # Not the clone the spec was made for (the claim failed, and the workspace is
                # a clone made since, at the path that monitor bound ahead): it lets the run
                # go (what it wrote goes too), and another gets the right spec.
                await monitors.abandon(monitor)
                await asyncio.to_thread(rundir.forget_process, run_dir, run.id)
                monitor = await self.monitors.take(run_dir, (run.id, limits))
                handed = None
        except BaseException:
            await monitors.abandon(monitor)
            raise
        ready = None if handed is not None else for_monitor(borrowed, False)
        await monitors.send_spec(monitor, run_dir, ready)

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
        await rundir.remove_tree(run_dir)

    # --- helpers ---------------------------------------------------------------------------
    def _reserve(
        self, run: models.Run, branch: str
    ) -> tuple[clone_pool.Key | None, clone_pool.Entry | None]:
        """A pooled clone for a new run, out of the pool (not for a follow-up, which
        continues an existing branch)."""
        if launch.continues(run.spec.base_branch, branch):
            return None, None
        pool = self.clones.key(run.spec.repo, run.spec.base_branch)
        return pool, None if pool is None else self.clones.reserve(pool)

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


def _cpu_weight(weight: int) -> int | None:
    """The runs' CPU weight, or None at the default (no cgroup is made for it then)."""
    return None if weight == cgroups.DEFAULT_WEIGHT else weight
