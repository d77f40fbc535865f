"""Fixtures for the fault suite (tests/faults): real server processes on the local backend that
tests kill, starve or feed hostile agents, then check what survives.

Runnable alone (``make faults``) and part of ``make test``. Every test here gets the ``faults``
and ``integration`` markers. Randomness is seeded: the seed is printed in the test report header
and ``AGENTFARM_FAULT_SEED=<n>`` replays a run.

Shared fixtures (each helper may add its own in its own module):

- ``fault_seed``: the session's seed (an int).
- ``source``: a git repository with one commit on ``main``.
- ``serve(env)``: a real server process (:class:`tests.integration.server.Server`, real
  bubblewrap) on the test's data directory; ``.kill()`` is ``kill -9``, ``serve(env)`` again
  restarts it on the same data; every server started is stopped after the test.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.server import Server
from tests.realparts import missing

HERE = Path(__file__).parent
SEED_ENV = "AGENTFARM_FAULT_SEED"


def _session_seed() -> int:
    raw = os.environ.get(SEED_ENV, "").strip()
    if raw:
        try:
            return int(raw)
        except ValueError:
            raise pytest.UsageError(
                f"{SEED_ENV}={raw!r} is not an integer: set it to the seed a failed run printed"
            ) from None
    return random.SystemRandom().randrange(1, 2**31)


SEED = _session_seed()


def pytest_report_header() -> str:
    return f"fault suite seed: {SEED} (replay with {SEED_ENV}={SEED})"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def fault_seed(request: pytest.FixtureRequest) -> int:
    """The seed for this test: the session's seed mixed with the test's name, so each test draws
    its own sequence and replays alone with the same ``AGENTFARM_FAULT_SEED``."""
    return random.Random(f"{SEED}:{request.node.nodeid}").randrange(2**31)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A git repository with one commit on `main`."""
    repo = tmp_path / "project"
    repo.mkdir()

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True)

    git("init", "-q", "-b", "main")
    (repo / "README.md").write_text("# project\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "initial")
    return repo


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Server]]:
    """``serve(env)``: a real server process (local backend, real bubblewrap) with ``env`` on the
    test's data directory (the same each time, as a restarted server has)."""
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
