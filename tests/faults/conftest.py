"""Fixtures for the fault suite (tests/faults): real server processes on the local backend that
tests kill, starve or feed hostile agents, then check what survives.

Runnable alone (``make faults``) and part of ``make test``. Every test here gets the ``faults``
and ``integration`` markers. Randomness is seeded: the seed is printed in the report header (when
tests/faults is run alone) and in every failure; ``AGENTFARM_FAULT_SEED=<n>`` replays the draws.

Shared fixtures (each helper may add its own in its own module):

- ``fault_seed``: the session's seed (an int).
- ``source``: a git repository with one commit on ``main``.
- ``serve(env, port=None)``: a real server process (:class:`tests.integration.server.Server`,
  real bubblewrap) on the test's data directory; ``.kill()`` is ``kill -9``, ``serve(env)``
  again restarts it on the same data; every server started is stopped after the test.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.server import Server
from tests.realparts import missing

HERE = Path(__file__).parent
#: ``serve(env, port=None)``, the fixture below.
Serve = Callable[..., Server]
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
def fault_seed() -> int:
    """The session's seed (``AGENTFARM_FAULT_SEED`` replays a run with it)."""
    return SEED


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
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(env, port=None)``: a real server process (local backend, real bubblewrap) with
    ``env`` on the test's data directory (the same each time, as a restarted server has), on
    ``port`` (default: a free one; a restart that webhooks must reach gives the same)."""
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    started: list[Server] = []

    def start(env: dict[str, str], port: int | None = None) -> Server:
        # A server that does not come up is aborted: faulthandler shows where it was stuck.
        srv = Server(tmp_path / "data", {"PYTHONFAULTHANDLER": "1", **env}, tmp_path / "server.log")
        if port is not None:
            srv.port, srv.url = port, f"http://127.0.0.1:{port}"
            srv.env |= {"AGENTFARM_PORT": str(port), "AGENTFARM_URL": srv.url}
        started.append(srv)
        try:
            return srv.start()
        except RuntimeError:
            if srv.proc is not None and srv.proc.poll() is None:
                srv.proc.send_signal(signal.SIGABRT)
                srv.proc.wait(10)
            srv.proc = None
            raise RuntimeError(f"the server did not start: {srv.log.read_text()[-6000:]}") from None

    yield start
    for srv in started:
        srv.stop()
