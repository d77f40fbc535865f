"""The disk under the data directory filling up (a small tmpfs mounted there): a run that
fills it ends with a reason that says so, writes answer 507 in the one error shape, the
server keeps answering, the database stays intact, and once space returns new runs work
without a restart."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.fault_kit import FINAL, answers, events, launch, start_server
from tests.integration.server import Server
from tests.realparts import in_ci

#: 40 MB in lines of 10 KB: more than the data directory holds.
FILL = "yes \"$(head -c 10239 /dev/zero | tr '\\0' x)\" | head -n 4000; echo done"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs as the data directory (root mounts it; unmounted after)."""
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(data)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        if in_ci():
            pytest.fail(f"CI=true and tmpfs cannot be mounted: {mounted.stderr}")
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(directory: Path) -> Path:
    """Fills what space is left under ``directory`` with one file; its path."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 512):  # big writes, then the last few KiB
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def integrity(data: Path) -> str:
    conn = sqlite3.connect(f"file:{data / 'agentfarm.db'}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_a_full_disk_gives_clear_errors_keeps_the_database_and_recovers(
    small_disk: Path, source: Path, tmp_path: Path
) -> None:
    server: Server = start_server(small_disk, {}, tmp_path / "server.log")
    try:
        # An agent whose output fills the disk: its run ends, saying the disk is full.
        flood = launch(server, source, ["sh", "-c", FILL])
        run = server.wait_status(flood, FINAL, timeout=40)
        assert run["status"] == "failed", run
        assert "is full" in run["error"] and "free space" in run["error"], run["error"]
        assert answers(server)

        # Nothing left at all: a launch is refused with 507 in the error shape, saying what
        # to do; reads still answer.
        filler = fill(small_disk)
        with server.client() as c:
            spec = {"repo": str(source), "prompt": "go", "agent": "command",
                    "command": {"argv": ["sh", "-c", "echo fine"], "prompt": "none"}}  # fmt: skip
            # SQLite may still commit a few writes into its write-ahead log's own pages.
            for _ in range(100):
                refused = c.post("/api/runs", json={"spec": spec})
                if refused.status_code != 201:
                    break
            assert refused.status_code == 507, refused.text
            error = refused.json()["error"]
            assert error["code"] == "storage_full", error
            assert "free space" in error["message"], error
            assert c.get(f"/api/runs/{flood}").status_code == 200
        assert answers(server)
        assert integrity(small_disk) == "ok"

        # Space returns: the same server launches and finishes runs again.
        filler.unlink()
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        after = launch(server, source, ["sh", "-c", "echo fine"])
        done = server.wait_status(after, FINAL, timeout=60)
        assert done["status"] == "succeeded", done
        assert [e["data"]["text"] for e in events(server, after) if e["type"] == "agent.text"] == [
            "fine"
        ]
        assert integrity(small_disk) == "ok"
    finally:
        server.stop()
    assert os.path.ismount(small_disk)
