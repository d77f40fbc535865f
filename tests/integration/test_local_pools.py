"""The local backend's pools (ready clones, idle monitors) with real bubblewrap, git and
cgroups: a pooled launch starts at the source's current commit on its own branch, owned by the
sandbox uid; concurrent launches get their own clones; pools of 0 launch as before; a server
killed with its pools full leaves no idle monitor (nor the egress proxy each forked ahead of
need), and a restart discards its clones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from agentfarm.backends.local import clone_pool, egress, monitors, priority
from agentfarm.backends.local.backend import LocalBackend
from agentfarm.domain import backend_config, errors, models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests import realparts
from tests.integration.server import Server

pytestmark = pytest.mark.integration

ROOT = os.geteuid() == 0
IDENT = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
#: Says where the workspace stands, commits a file, and exits.
REPORTER = """
import json, os, subprocess
def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
open("mine.txt", "w").write(os.environ.get("MARK", "") + "\\n")
git("add", "mine.txt")
git("commit", "-q", "-m", "mine")
print(json.dumps({
    "base": git("rev-parse", "HEAD~1"), "branch": git("branch", "--show-current"),
    "main": git("rev-parse", "main"), "origin": git("rev-parse", "origin/main"),
    "owner": os.stat(".").st_uid, "readme": open("README").read(), "uid": os.getuid(),
    "nice": os.nice(0),
}), flush=True)
"""


@pytest.fixture(autouse=True)
def _need_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("bwrap") is None:
        realparts.missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    monkeypatch.setattr(clone_pool, "REFILL_DELAY", 0)
    monkeypatch.setattr(monitors, "REFILL_DELAY", 0)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    repo = tmp_path / "src"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README").write_text("first\n")
    subprocess.run(["git", "-C", str(repo), "add", "README"], check=True)
    subprocess.run(["git", "-C", str(repo), *IDENT, "commit", "-q", "-m", "init"], check=True)
    return repo


@pytest.fixture
def reporter(tmp_path: Path) -> str:
    directory = tmp_path / "agents"
    directory.mkdir()
    path = directory / "reporter"
    path.write_text("#!/usr/bin/python3\n" + textwrap.dedent(REPORTER))
    path.chmod(0o755)
    return str(path)


async def launch(backend: LocalBackend, source: Path, program: str, mark: str) -> dict[str, str]:
    """Launch the reporter on ``source``; what it printed, once its branch came home."""
    run = models.Run(spec=models.AgentSpec(repo=str(source), backend=backend_config.LocalSpec()))
    command = AgentCommand(argv=[program], env={"MARK": mark})
    handle, info = await backend.launch(run, LaunchSpec.of(run.id, command, {}))
    records = [r async for r in handle.records(0)]
    lines = [r.data for r in records if r.kind == "stdout"]
    assert lines, [r.data for r in records]
    assert await handle.finalize() == []
    report: dict[str, str] = json.loads(lines[-1])
    report["run"] = run.id
    report["workspace"] = str(info.workspace)
    return report


async def until(check: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        await asyncio.sleep(0.02)


def git_out(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *IDENT, *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def count_hits(backend: LocalBackend) -> list[str | None]:
    """What each claim of the backend's clone pool gives (a commit: a pooled clone)."""
    results: list[str | None] = []
    reserve, settle = backend.clones.reserve, backend.clones.settle

    def spy_reserve(key: clone_pool.Key) -> clone_pool.Entry | None:
        entry = reserve(key)
        if entry is None:
            results.append(None)
        return entry

    async def spy_settle(
        key: clone_pool.Key, entry: clone_pool.Entry, workspace: Path, branch: str
    ) -> str | None:
        results.append(await settle(key, entry, workspace, branch))
        return results[-1]

    backend.clones.reserve = spy_reserve  # type: ignore[method-assign]
    backend.clones.settle = spy_settle  # type: ignore[method-assign]
    return results


def ready(backend: LocalBackend, source: Path) -> int:
    key = backend.clones.key(str(source), None)
    return len(backend.clones._entries.get(key, [])) if key else 0  # type: ignore[arg-type]


async def test_a_pooled_launch_starts_at_a_commit_pushed_after_the_pool_was_filled(
    tmp_path: Path, source: Path, reporter: str
) -> None:
    settings = Settings(data_dir=tmp_path / "data", local_clone_pool=1, local_monitor_pool=1)
    backend = LocalBackend(settings)
    await backend.astart()
    claims = count_hits(backend)
    try:
        await launch(backend, source, reporter, "one")  # a miss: the pool fills after
        await until(lambda: ready(backend, source) == 1, "a ready clone")
        (source / "README").write_text("second\n")
        subprocess.run(["git", "-C", str(source), *IDENT, "commit", "-qam", "two"], check=True)
        pushed = git_out(source, "rev-parse", "main")

        second = await launch(backend, source, reporter, "two")
        assert claims == [None, pushed]  # the second launch took the pooled clone
        assert second["base"] == second["main"] == second["origin"] == pushed
        assert second["readme"] == "second\n"
        assert second["branch"] == f"agentfarm/{second['run']}"
        if ROOT:
            assert second["owner"] == second["uid"] == settings.sandbox_uid
        # The idle monitor's lowest priority is not the agent's: the agents' weight's is.
        assert second["nice"] == priority.niceness(settings.local_agent_cpu_weight) == 6
        # Its commit came home on its own branch, on top of the pushed one.
        assert git_out(source, "rev-parse", f"agentfarm/{second['run']}~1") == pushed
        assert git_out(source, "show", f"agentfarm/{second['run']}:mine.txt") == "two"
    finally:
        await backend.aclose()
    assert not (settings.data_dir / "pool").exists()


async def test_concurrent_launches_get_their_own_clones(
    tmp_path: Path, source: Path, reporter: str
) -> None:
    settings = Settings(data_dir=tmp_path / "data", local_clone_pool=2, local_monitor_pool=2)
    backend = LocalBackend(settings)
    await backend.astart()
    try:
        await launch(backend, source, reporter, "warm")
        await until(lambda: ready(backend, source) == 2, "two ready clones")
        claims = count_hits(backend)
        reports = await asyncio.gather(
            *(launch(backend, source, reporter, mark) for mark in ("a", "b", "c"))
        )
        assert len({r["workspace"] for r in reports}) == 3
        assert sorted(c is None for c in claims) == [False, False, True]  # two pooled, one not
        for report, mark in zip(reports, ("a", "b", "c"), strict=True):
            assert report["branch"] == f"agentfarm/{report['run']}"
            assert git_out(source, "show", f"agentfarm/{report['run']}:mine.txt") == mark
            log = git_out(source, "log", "--format=%s", f"agentfarm/{report['run']}")
            assert log.splitlines() == ["mine", "init"]
    finally:
        await backend.aclose()


async def _pooled(tmp_path: Path, source: Path, reporter: str) -> LocalBackend:
    """A backend with one ready clone of ``source`` (a launch filled the pool)."""
    settings = Settings(data_dir=tmp_path / "data", local_clone_pool=1, local_monitor_pool=1)
    backend = LocalBackend(settings)
    await backend.astart()
    await launch(backend, source, reporter, "warm")
    await until(lambda: ready(backend, source) == 1, "a ready clone")
    return backend


def _processes_in(run_dir: Path) -> list[str]:
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc / "cwd").startswith(str(run_dir)):
                    left.append(proc.name)
    return left


async def test_a_claim_that_fails_after_the_spec_went_ahead_starts_nothing(
    tmp_path: Path, source: Path, reporter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spec goes to the monitor before the pooled clone is claimed; without the go the
    # monitor removes what it readied (spool, groups) and exits: no agent ever ran.
    backend = await _pooled(tmp_path, source, reporter)
    handed: list[bool] = []
    hand_spec = monitors.hand_spec

    async def spy(proc: asyncio.subprocess.Process, spec: object) -> None:
        handed.append(True)
        await hand_spec(proc, spec)  # type: ignore[arg-type]

    async def broken(*args: object) -> str | None:
        raise OSError("the disk went away")

    monkeypatch.setattr(monitors, "hand_spec", spy)
    monkeypatch.setattr(backend.clones, "settle", broken)
    run = models.Run(spec=models.AgentSpec(repo=str(source), backend=backend_config.LocalSpec()))
    command = AgentCommand(argv=[reporter], env={"MARK": "never"})
    try:
        with pytest.raises(OSError, match="the disk went away"):
            await backend.launch(run, LaunchSpec.of(run.id, command, {}))
        assert handed == [True]
        run_dir = backend.run_dir(run.id)
        assert not (run_dir / "spool").exists()
        assert not await backend.started(run)  # so a restart would launch it again
        assert _processes_in(run_dir) == []
        root = Path("/sys/fs/cgroup")
        groups = [*root.glob(f"agentfarm/{run.id}"), *root.glob(f"*/agentfarm/{run.id}")]
        assert groups == []
        assert "mine.txt" not in git_out(source, "ls-tree", "-r", "--name-only", "HEAD")
    finally:
        await backend.aclose()


async def _starts_all_the_same(
    backend: LocalBackend, source: Path, reporter: str, mark: str
) -> None:
    """A launch on ``backend`` runs its agent on its own branch, whose commit comes home."""
    try:
        report = await launch(backend, source, reporter, mark)
        assert report["branch"] == f"agentfarm/{report['run']}"
        assert git_out(source, "show", f"agentfarm/{report['run']}:mine.txt") == mark
    finally:
        await backend.aclose()


async def test_a_claim_that_falls_back_to_a_clone_still_starts_its_agent(
    tmp_path: Path, source: Path, reporter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await _pooled(tmp_path, source, reporter)

    async def not_patched_up(*args: object) -> str | None:
        return None  # as when the source's HEAD names another branch now

    monkeypatch.setattr(clone_pool, "_refresh", not_patched_up)
    await _starts_all_the_same(backend, source, reporter, "fallback")


async def test_a_launch_that_fails_before_its_claim_leaves_no_clone_behind(
    tmp_path: Path, source: Path, reporter: str
) -> None:
    # The pooled clone leaves the pool before the run's directory is made (with the agent's
    # binary looked up in the same step): a launch that fails there removes it.
    backend = await _pooled(tmp_path, source, reporter)
    key = backend.clones.key(str(source), None)
    assert key is not None
    entry = backend.clones._entries[key][-1].path
    run = models.Run(spec=models.AgentSpec(repo=str(source), backend=backend_config.LocalSpec()))
    command = AgentCommand(argv=["no-such-agent-binary"], env={})
    try:
        with pytest.raises(errors.AgentfarmError, match="no-such-agent-binary"):
            await backend.launch(run, LaunchSpec.of(run.id, command, {}))
        assert not entry.exists()
        assert not backend.run_dir(run.id).exists()
        await until(lambda: ready(backend, source) == 1, "the pool refilled")
    except BaseException:
        await backend.aclose()
        raise
    await _starts_all_the_same(backend, source, reporter, "after")


async def test_a_spec_sent_ahead_for_other_objects_goes_to_no_agent(
    tmp_path: Path, source: Path, reporter: str
) -> None:
    # The spec sent ahead binds the pooled clone's borrowed object directories; a workspace
    # that borrows others gets a new monitor with the right spec (the first bind would fail).
    backend = await _pooled(tmp_path, source, reporter)
    for entry in backend.clones._entries[backend.clones.key(str(source), None)]:  # type: ignore[index]
        entry.borrowed = [tmp_path / "elsewhere"]
    await _starts_all_the_same(backend, source, reporter, "respec")


async def test_pools_of_zero_launch_as_before(tmp_path: Path, source: Path, reporter: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", local_clone_pool=0, local_monitor_pool=0)
    backend = LocalBackend(settings)
    await backend.astart()
    try:
        for mark in ("a", "b"):
            report = await launch(backend, source, reporter, mark)
            assert report["branch"] == f"agentfarm/{report['run']}"
            assert report["base"] == git_out(source, "rev-parse", "main")
        assert not (settings.data_dir / "pool").exists()
        assert backend.monitors._idle == []
    finally:
        await backend.aclose()


def idle_monitors(kind: bytes = b"monitor") -> set[int]:
    """Idle monitors of this checkout's code (other checkouts may run tests meanwhile), or
    (``proxy``) the egress proxies they forked ahead of need: their children, with the same
    command line, named ``egress.PROXY_NAME`` a moment after the fork. A process whose
    parent is one of these (the monitor while the process it forked away from lives, a
    proxy not named yet) is neither."""
    parents, proxies = {}, set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
            named = Path(f"/proc/{name}/comm").read_bytes().strip() == egress.PROXY_NAME
            parent = parent_of(int(name))
        except OSError:
            continue
        root = f"PYTHONPATH={monitors.PACKAGE_ROOT}".encode()
        ours = any(item.startswith(root) for item in environ)
        if ours and b"agentfarm.backends.local.monitor" in cmdline and b"--idle" in cmdline:
            parents[int(name)] = parent
            if named:
                proxies.add(int(name))
    if kind == b"proxy":
        return proxies
    return {pid for pid, parent in parents.items() if parent not in parents} - proxies


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def wait_for_idle(before: set[int], before_proxies: set[int]) -> tuple[set[int], set[int]]:
    """Two idle monitors, each with the egress proxy it forked ahead of need."""
    deadline = time.monotonic() + 20
    while True:
        idle = idle_monitors() - before
        proxies = idle_monitors(b"proxy") - before_proxies
        with contextlib.suppress(OSError):
            if len(idle) == 2 and {parent_of(p) for p in proxies} == idle and len(proxies) == 2:
                return idle, proxies
        assert time.monotonic() < deadline, f"idle monitors {idle}, their proxies {proxies}"
        time.sleep(0.05)


def wait_gone(pids: set[int], timeout: float = 10) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if Path(f"/proc/{p}").exists() and _not_zombie(p)}
        if not left:
            return left
        time.sleep(0.05)
    return left


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_server_leaves_no_idle_monitor_and_a_restart_discards_its_clones(
    tmp_path: Path,
) -> None:
    before, before_proxies = idle_monitors(), idle_monitors(b"proxy")
    data = tmp_path / "data"
    env = {"AGENTFARM_LOCAL_MONITOR_POOL": "2"}
    srv = Server(data, env, tmp_path / "server.log").start()
    try:
        idle, proxies = wait_for_idle(before, before_proxies)
        # A clone an earlier server left in its pool, as a crash mid-way would.
        stale = data / "pool" / "9" / "workspace"
        stale.mkdir(parents=True)
        srv.kill()
        assert wait_gone(idle) == set(), "idle monitors outlived the killed server"
        assert wait_gone(proxies) == set(), "their egress proxies outlived them"

        srv.start()
        assert not stale.exists()
        idle, proxies = wait_for_idle(before, before_proxies)
        srv.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        srv.proc.wait(15)  # type: ignore[union-attr]
        srv.proc = None
        assert wait_gone(idle) == set(), "idle monitors outlived the stopped server"
        assert wait_gone(proxies) == set(), "their egress proxies outlived them"
        assert not (data / "pool").exists()
    finally:
        srv.stop()
