from __future__ import annotations

from pathlib import Path

from agentfarm.backends.local import cgroups

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
        "the server does not run as root"
    ]


def test_no_limits_no_groups(tmp_path: Path) -> None:
    assert cgroups.create("r1", cgroups.Limits(), root=tmp_path, is_root=True).dirs == []
