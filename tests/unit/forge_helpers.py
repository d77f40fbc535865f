"""Shared by the fake-forge and forge-client tests: a started fake per kind, a clean git
environment, and a loopback receiver for webhook deliveries."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fakes.forge import FakeForge, Kind

KINDS: list[Kind] = ["github", "forgejo"]
REPO = "alice/proj"


@pytest.fixture(params=KINDS)
def forge(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeForge]:
    with FakeForge(tmp_path / "forge", kind=request.param) as fake:
        fake.create_repo(REPO)
        yield fake


def git_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Agent",
        "GIT_AUTHOR_EMAIL": "agent@example.com",
        "GIT_COMMITTER_NAME": "Agent",
        "GIT_COMMITTER_EMAIL": "agent@example.com",
    }


def run_git(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def push_branch(fake: FakeForge, tmp_path: Path, branch: str, content: str = "change\n") -> str:
    """Clone over HTTP, commit one file, push ``branch``; the pushed sha."""
    env = git_env(tmp_path / "home")
    clone = tmp_path / f"clone-{branch.replace('/', '-')}"
    url = fake.git_url(REPO, token=fake.token)
    assert run_git("clone", "-q", url, str(clone), cwd=tmp_path, env=env).returncode == 0
    (clone / "change.txt").write_text(content)
    run_git("add", "-A", cwd=clone, env=env)
    run_git("commit", "-qm", f"Work on {branch}", cwd=clone, env=env)
    pushed = run_git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=clone, env=env)
    assert pushed.returncode == 0, pushed.stderr
    return run_git("rev-parse", "HEAD", cwd=clone, env=env).stdout.strip()


class Receiver:
    """A loopback HTTP server that records what is posted to it and answers 202."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append((dict(self.headers.items()), self.rfile.read(length)))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()
