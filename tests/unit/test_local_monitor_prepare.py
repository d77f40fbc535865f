"""The prepare line: a launch tells its monitor the run's cgroup ahead of the spec."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from agentfarm.backends.local import cgroups, handover, monitors
from tests import realparts

LIMITS = cgroups.Limits(memory_mb=256, cpus=1.5, pids=300, cpu_weight=25)


def _stdin(data: bytes, *, close: bool = True) -> int:
    """A pipe holding ``data``, its reading end (closed for writing unless ``close`` is
    False, as when the server has not written its go yet)."""
    r, w = os.pipe()
    os.write(w, data)
    if close:
        os.close(w)
    else:
        _KEEP.append(w)
    return r


_KEEP: list[int] = []


def test_a_spec_alone_is_read_as_before() -> None:
    spec = json.dumps({"run_dir": "/r"}).encode()
    assert handover.read(_stdin(spec)) == handover.Received(spec, None, b"")
    assert handover.read(_stdin(spec + b"\n")) == handover.Received(spec, None, b"")
    assert handover.read(_stdin(b"")) == handover.Received(b"", None, b"")


def test_the_prepare_line_makes_the_groups_before_the_spec_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[tuple[str, cgroups.Limits]] = []

    def create(name: str, limits: cgroups.Limits) -> cgroups.RunCgroup:
        made.append((name, limits))
        return cgroups.RunCgroup()

    monkeypatch.setattr(cgroups, "create", create)
    line = handover.prepare_line("run-1", LIMITS)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    got = handover.read(_stdin(line + b'{"run_dir": "/r"}'))
    assert got.spec == b'{"run_dir": "/r"}'
    assert made == [("run-1", LIMITS)]
    early = got.early
    assert early is not None and (early.name, early.limits) == ("run-1", LIMITS)
    # The spec's own groups are those: nothing is made twice.
    assert handover.cgroup_for(early, "run-1", LIMITS) is early.cgroup
    assert made == [("run-1", LIMITS)]
    # Another run's or other limits: made anew (and the early ones removed).
    other = handover.cgroup_for(early, "run-1", cgroups.Limits(pids=5))
    assert other is not early.cgroup and made[-1] == ("run-1", cgroups.Limits(pids=5))


def test_a_garbled_prepare_line_is_only_a_lost_head_start() -> None:
    got = handover.read(_stdin(handover.PREPARE + b"nonsense\nSPEC"))
    assert (got.spec, got.early) == (b"SPEC", None)


def test_a_gated_spec_reads_no_further_than_its_line() -> None:
    # The go is read by the launcher child from the same pipe: nothing past the spec's line
    # may be swallowed by the monitor (or kept, when it came along, in ``rest``).
    fd = _stdin(b'{"gated": true}\n', close=False)
    got = handover.read(fd)
    assert (got.spec, got.rest) == (b'{"gated": true}', b"")
    os.write(_KEEP[-1], handover.GO)
    handover.wait_for_go(fd, got.rest)
    # A go that came with the spec is in ``rest``.
    both = handover.read(_stdin(b'{"gated": true}\n' + handover.GO))
    assert both.rest == handover.GO
    handover.wait_for_go(_stdin(b""), both.rest)


def test_no_go_before_the_end_calls_the_start_off() -> None:
    for data in (b"", b"g", b"stop\n"):
        with pytest.raises(handover.NotLaunched):
            handover.wait_for_go(_stdin(data), b"")


def _group_dirs(name: str) -> list[Path]:
    group = cgroups.create(name, LIMITS)
    dirs = list(group.dirs)
    group.destroy(timeout=1.0)
    return dirs


async def test_a_monitor_told_its_groups_and_then_no_spec_removes_them(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        realparts.missing("root for cgroups", "run the tests as root")
    name = f"prepare-test-{os.getpid()}"
    dirs = _group_dirs(name)
    if not dirs:
        realparts.missing("a cgroup hierarchy", "run the tests on a host with cgroups")
    proc = await monitors.spawn(tmp_path)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(handover.prepare_line(name, LIMITS))
    await proc.stdin.drain()
    async with asyncio.timeout(30):
        while not all(d.is_dir() for d in dirs):
            await asyncio.sleep(0.01)
        # Made by the monitor, with the limits set before any spec came.
        pids = next((d / "pids.max" for d in dirs if (d / "pids.max").exists()), None)
        assert pids is None or pids.read_text().strip() == "300"
        await monitors.abandon(proc)  # the server's way out of a failed claim: stdin closes
        while any(d.exists() for d in dirs):
            await asyncio.sleep(0.01)
