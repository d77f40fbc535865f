"""Shared parts of the agent and disk fault tests: a real server process on the local backend
(real bubblewrap, monitor and cgroups), scripted command agents, and what a test reads of the
server process (its peak memory, whether it still answers)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import agent_script, git
from tests.integration.server import Server, events, post_run
from tests.realparts import missing

__all__ = ["agent_script", "events", "git", "post_run"]

FINAL = {"succeeded", "failed", "stopped", "lost"}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A git repository with one commit on `main`."""
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# project\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "initial")
    return repo


def start_server(data_dir: Path, env: dict[str, str], log: Path) -> Server:
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    return Server(data_dir, {"AGENTFARM_STOP_GRACE_SECONDS": "2", **env}, log).start()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Server]]:
    started: list[Server] = []

    def start(env: dict[str, str]) -> Server:
        srv = start_server(tmp_path / "data", env, tmp_path / "server.log")
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def launch(srv: Server, source: Path, argv: list[str], prompt: str = "go", **extra: Any) -> str:
    spec = {
        "repo": str(source),
        "prompt": prompt,
        "agent": "command",
        "command": {"argv": argv, "prompt": "none"},
        **extra,
    }
    run_id: str = post_run(srv, {"spec": spec})["id"]
    return run_id


def peak_rss_kib(srv: Server) -> int:
    """The server process's peak resident memory so far (VmHWM), in KiB."""
    assert srv.proc is not None
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def answers(srv: Server) -> bool:
    """The server answers its health check and the runs list (its event loop is not stuck)."""
    with srv.client() as c:
        try:
            return (
                c.get("/api/health", timeout=10).status_code == 200
                and c.get("/api/runs", timeout=10).status_code == 200
            )
        except httpx.HTTPError:
            return False


def run_processes(marker: str) -> list[str]:
    """Command lines of processes on the host that carry ``marker`` (a sandbox left behind)."""
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
