from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentfarm.backends.local import cgroups, hostinfo, priority

LIMITS = cgroups.Limits(memory_mb=64, cpus=0.5, pids=100)


def fake_v1(root: Path) -> None:
    for controller in ("memory", "cpu", "pids"):
        (root / controller).mkdir(parents=True)
        (root / controller / "tasks").write_text("")


def test_v1_sets_each_controller(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    group = cgroups.create("r1", LIMITS, root=tmp_path, is_root=True)
    assert group.version == 1
    assert not group.notices
    base = cgroups.PARENT + "/r1"
    assert (tmp_path / "memory" / base / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (tmp_path / "cpu" / base / "cpu.cfs_quota_us").read_text() == "50000"
    assert (tmp_path / "pids" / base / "pids.max").read_text() == "100"
    (tmp_path / "memory" / base / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    )
    assert group.oom_kills() == 2


def test_v1_missing_controller_is_a_notice(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    (tmp_path / "cpu" / "tasks").unlink()
    group = cgroups.create("r1", LIMITS, root=tmp_path, is_root=True)
    assert group.notices == ["CPU limit (0.5 cores) not enforced: no cgroup v1 cpu controller"]
    assert len(group.dirs) == 2


def test_v2_sets_limits_and_reads_memory_events(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    group = cgroups.create("r1", LIMITS, root=tmp_path, is_root=True)
    directory = tmp_path / cgroups.PARENT / "r1"
    assert group.version == 2
    assert group.dirs == [directory]
    assert (directory / "memory.max").read_text() == str(64 << 20)
    assert (directory / "cpu.max").read_text() == "50000 100000"
    assert (directory / "pids.max").read_text() == "100"
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert group.oom_kills() == 1


def test_v2_without_controllers_says_so(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("\n")
    group = cgroups.create("r1", LIMITS, root=tmp_path, is_root=True)
    assert group.dirs == []
    assert "not enforced: the cgroup v2 controller is not available" in group.notices[0]


def test_not_root_enforces_nothing_and_says_why(tmp_path: Path) -> None:
    group = cgroups.create("r1", LIMITS, root=tmp_path, is_root=False)
    assert group.notices == [
        "memory limit (64 MiB), CPU limit (0.5 cores), process limit (100) not enforced: "
        "the server does not run as root and the host delegates no writable cgroup v2 "
        "subtree to its user"
    ]


#: Where systemd puts a process of a user session: the user's manager owns ``user@1000.service``
#: and everything below it.
SESSION = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.scope\n"


def fake_v2_session(mount: Path) -> Path:
    """A cgroup v2 mount with a user session's groups; returns the delegated ``app.slice``."""
    for directory in (mount, *(mount / SESSION[4:].strip()).parents):
        if directory.is_relative_to(mount):
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "cgroup.controllers").write_text("cpu memory pids\n")
            (directory / "cgroup.subtree_control").write_text("")
            (directory / "cgroup.procs").write_text("")
    (mount / SESSION[4:].strip()).mkdir()
    return mount / "user.slice/user-1000.slice/user@1000.service/app.slice"


def test_not_root_uses_a_delegated_v2_subtree(tmp_path: Path) -> None:
    app_slice = fake_v2_session(tmp_path)
    assert cgroups.delegated(tmp_path, self_cgroup=SESSION) == app_slice
    group = cgroups.create("r1", LIMITS, root=tmp_path, is_root=False, self_cgroup=SESSION)
    directory = app_slice / cgroups.PARENT / "r1"
    assert group.version == 2
    assert group.notices == []
    assert group.dirs == [directory]
    assert group.memory_dir == directory
    assert (directory / "memory.max").read_text() == str(64 << 20)
    assert (directory / "pids.max").read_text() == "100"
    assert (app_slice / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"


def test_delegation_needs_groups_the_user_owns_on_a_v2_mount(tmp_path: Path) -> None:
    fake_v2_session(tmp_path / "v2")
    someone_else = os.geteuid() + 4242
    assert cgroups.delegated(tmp_path / "v2", self_cgroup=SESSION, uid=someone_else) is None
    # Only the process's own group is owned: it holds processes, so it cannot be used.
    assert cgroups.delegated(tmp_path / "v2", self_cgroup="0::/run-u7.scope\n") is None
    fake_v1(tmp_path / "v1")
    assert cgroups.delegated(tmp_path / "v1", self_cgroup=SESSION) is None
    assert cgroups.delegated(tmp_path / "v2", self_cgroup="1:memory:/x\n") is None


def test_hybrid_hosts_use_the_unified_mount(tmp_path: Path) -> None:
    app_slice = fake_v2_session(tmp_path / "unified")
    fake_v1(tmp_path)
    assert cgroups.delegated(tmp_path, self_cgroup=SESSION) == app_slice


def test_the_server_says_what_isolation_it_has_without_root(tmp_path: Path) -> None:
    assert hostinfo.startup_lines(is_root=True) == []
    assert hostinfo.run_notices(is_root=True) == []
    notice = hostinfo.same_uid_notice(os.geteuid())
    assert hostinfo.run_notices(is_root=False) == [notice]
    assert "not as a separate sandbox user" in notice
    lines = hostinfo.startup_lines(is_root=False, root=tmp_path, self_cgroup=SESSION)
    assert lines == [
        notice,
        f"no memory, CPU or process limits apply to agents: {cgroups.NO_DELEGATION}",
    ]
    app_slice = fake_v2_session(tmp_path)
    lines = hostinfo.startup_lines(is_root=False, root=tmp_path, self_cgroup=SESSION)
    assert lines[1] == (
        f"agent limits use the delegated cgroup v2 subtree {app_slice} "
        "(controllers: cpu, memory, pids)"
    )


def test_no_limits_no_groups(tmp_path: Path) -> None:
    assert cgroups.create("r1", cgroups.Limits(), root=tmp_path, is_root=True).dirs == []


def test_serve_logs_the_isolation_without_root(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from agentfarm.settings import Settings
    from agentfarm.web import app

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with caplog.at_level(logging.WARNING, logger="agentfarm.web.app"):
        app.default_backends(Settings(data_dir=tmp_path))
    # Each line the backend says about its isolation is logged once, as the log's argument:
    # the uid it shares, then the limits (none, or the delegated subtree's).
    lines = hostinfo.startup_lines()
    assert len(lines) == 2 and lines[0] == hostinfo.same_uid_notice(1000)
    logged = [r.args for r in caplog.records if r.name == "agentfarm.web.app"]
    assert logged == [(line,) for line in lines]


# --- the agents' CPU weight against the control plane -------------------------------------------
WEIGHT = cgroups.Limits(cpu_weight=25)


def test_v1_weight_goes_on_the_runs_parent_as_shares(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    group = cgroups.create("r1", WEIGHT, root=tmp_path, is_root=True)
    parent = tmp_path / "cpu" / cgroups.PARENT
    assert (parent / "cpu.shares").read_text() == "256"  # a quarter of v1's default 1024
    assert group.dirs == [parent / "r1"]  # the run joins it: out of any session autogroup
    assert group.memory_dir is None
    assert not group.notices


def test_v1_weight_with_limits_keeps_the_limits(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    limits = cgroups.Limits(memory_mb=64, cpus=0.5, pids=100, cpu_weight=25)
    group = cgroups.create("r1", limits, root=tmp_path, is_root=True)
    base = cgroups.PARENT + "/r1"
    assert (tmp_path / "cpu" / base / "cpu.cfs_quota_us").read_text() == "50000"
    assert (tmp_path / "cpu" / cgroups.PARENT / "cpu.shares").read_text() == "256"
    assert len(group.dirs) == 3
    assert not group.notices


def test_v2_weight_goes_on_the_runs_parent(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    group = cgroups.create("r1", WEIGHT, root=tmp_path, is_root=True)
    parent = tmp_path / cgroups.PARENT
    assert (parent / "cpu.weight").read_text() == "25"
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu"
    assert group.dirs == [parent / "r1"]
    assert not group.notices


def test_the_weight_is_best_effort_and_never_a_notice(tmp_path: Path) -> None:
    """No cpu controller, no cgroups at all, or not root and nothing delegated: the run goes
    on without a group (its monitor's nice value still lowers it), and says nothing."""
    fake_v1(tmp_path / "v1")
    (tmp_path / "v1" / "cpu" / "tasks").unlink()
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cgroup.controllers").write_text("memory pids\n")
    (tmp_path / "none").mkdir()
    for root in ("v1", "v2", "none"):
        group = cgroups.create("r1", WEIGHT, root=tmp_path / root, is_root=True)
        assert (group.dirs, group.notices) == ([], []), root
    group = cgroups.create("r1", WEIGHT, root=tmp_path / "v2", is_root=False, self_cgroup="0::/")
    assert (group.dirs, group.notices) == ([], [])


@pytest.mark.parametrize(
    ("weight", "nice"), [(None, 0), (100, 0), (400, 0), (80, 1), (25, 6), (10, 10), (1, 19)]
)
def test_niceness_matches_the_weight(weight: int | None, nice: int) -> None:
    assert priority.niceness(weight) == nice


def test_a_monitor_lowers_itself_and_its_autogroup() -> None:
    """In a new session, as the monitor does: its nice value, and its session's autogroup's
    where the kernel groups by session (the children inherit the former)."""
    code = (
        "import os, sys; from pathlib import Path; from agentfarm.backends.local import priority;"
        "os.setsid(); priority.lower_priority(25); pid = os.fork()\n"
        "if pid == 0: print(os.getpriority(os.PRIO_PROCESS, 0)); os._exit(0)\n"
        "os.waitpid(pid, 0); auto = Path('/proc/self/autogroup');"
        "print(auto.read_text().split()[-1] if auto.exists() else 'none')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child_nice, autogroup = out.stdout.split()
    assert child_nice == "6"
    assert autogroup in ("6", "none")


def test_the_wait_of_the_first_move_starts_with_a_move_into_our_own_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # v1: the first of pids, memory, cpu there is; its path is ours from /proc/self/cgroup.
    own = "5:memory:/a/b\n4:pids:/c\n0::/u\n"
    for controller in ("memory", "pids"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "tasks").write_text("")
    found = cgroups.own_group_procs(tmp_path, self_cgroup=own)
    assert found == tmp_path / "pids" / "c" / "cgroup.procs"
    # v2 (or a hybrid's unified mount): the "0::" line's group.
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("")
    assert cgroups.own_group_procs(v2, self_cgroup=own) == v2 / "u" / "cgroup.procs"
    assert cgroups.own_group_procs(tmp_path / "none", self_cgroup=own) is None
    # The move itself: our pid into our own group (nothing changes), errors swallowed.
    (tmp_path / "pids" / "c").mkdir()
    (tmp_path / "pids" / "c" / "cgroup.procs").write_text("")
    real = cgroups.own_group_procs
    monkeypatch.setattr(cgroups, "own_group_procs", lambda root: real(root, self_cgroup=own))
    cgroups.warm_moves(tmp_path)
    assert (tmp_path / "pids" / "c" / "cgroup.procs").read_text() == str(os.getpid())
    cgroups.warm_moves(tmp_path / "none")  # nowhere to move: nothing, and no error
