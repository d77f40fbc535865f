"""Fixtures shared by the integration tests: a source repository to launch agents on, and
real server processes (``serve``)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.server import Server
from tests.realparts import missing


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def agent_script(tmp_path: Path, body: str) -> str:
    """Writes ``body`` as an executable shell script (a command agent) under ``tmp_path``;
    its path."""
    bindir = tmp_path / "agents"
    bindir.mkdir(exist_ok=True)
    bindir.chmod(0o755)
    path = bindir / "agent.sh"
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


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


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Server]]:
    """``serve(env)``: a real server process (local backend, real bubblewrap) with ``env``,
    on the test's data directory (the same each time, as a restarted server has); every
    server started is stopped after the test."""
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    started: list[Server] = []

    def start(env: dict[str, str]) -> Server:
        srv = Server(tmp_path / "data", env, tmp_path / "server.log").start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
