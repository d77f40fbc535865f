"""What a run leaves on disk, end to end through a real server, the CLI, the real Claude Code
CLI against the scripted fake model, real git and real bubblewrap: the spool goes once its
events are stored, `agentfarm rm` deletes a run with its files, and retention removes a
finished run's files while its row, events and branch stay."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentfarm.backends.local.monitor_spec import SPOOL
from tests.fakes import anthropic_api as fake
from tests.integration.conftest import git
from tests.integration.server import Server, post_run

pytestmark = pytest.mark.integration

StartServer = Callable[..., Server]


@pytest.fixture
def start_server(
    claude_bin: str, fake_anthropic: fake.FakeAnthropic, serve: Callable[[dict[str, str]], Server]
) -> StartServer:
    def start(**env: str) -> Server:
        return serve(
            {
                "AGENTFARM_CLAUDE_BIN": claude_bin,
                "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
                "ANTHROPIC_API_KEY": "sk-ant-e2e-secret-value",
                "AGENTFARM_STOP_GRACE_SECONDS": "3",
                **env,
            }
        )

    return start


def run_to_the_end(srv: Server, source: Path) -> dict[str, Any]:
    spec = {
        "repo": str(source),
        "prompt": f"{fake.marker('write-and-commit')} add a hello file",
        "env": {"CLAUDE_CODE_MAX_RETRIES": "0"},
    }
    run_id = post_run(srv, {"spec": spec})["id"]
    return srv.wait_status(run_id, {"succeeded", "failed", "lost"}, timeout=90)


def wait_gone(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} is still there"
        time.sleep(0.1)


def test_spool_goes_once_stored_and_rm_deletes_the_run(
    start_server: StartServer, source: Path
) -> None:
    # Fails before: the spool stayed next to the stored events, and there was no `rm`.
    srv = start_server()
    run = run_to_the_end(srv, source)
    assert run["status"] == "succeeded", run
    run_dir = srv.data_dir / "runs" / run["id"]
    assert (run_dir / "workspace" / "hello.txt").exists()  # kept for a look (retention: 168 h)
    wait_gone(run_dir / SPOOL)
    with srv.client() as c:
        stored = c.get(f"/api/runs/{run['id']}/events").json()
    assert stored[-1]["data"]["status"] == "succeeded"

    result = srv.cli("rm", run["id"])
    assert result.returncode == 0, result.stderr
    assert f"run {run['id']} removed" in result.stdout
    assert not run_dir.exists()
    with srv.client() as c:
        assert c.get(f"/api/runs/{run['id']}").status_code == 404
        assert c.get(f"/api/runs/{run['id']}/events").status_code == 404
    assert "Add hello.txt" in git(source, "log", "--format=%s", f"agentfarm/{run['id']}")
    again = srv.cli("rm", run["id"])
    assert again.returncode == 1
    assert f"no run with id {run['id']!r}" in again.stderr.replace("\n", " ")


def test_retention_removes_a_finished_runs_files_and_keeps_the_run(
    start_server: StartServer, source: Path
) -> None:
    # Fails before: nothing ever removed a finished run's workspace, home and logs.
    srv = start_server(AGENTFARM_RETENTION_HOURS="0.0002")  # 0.72 s; swept every second
    run = run_to_the_end(srv, source)
    assert run["status"] == "succeeded", run
    wait_gone(srv.data_dir / "runs" / run["id"])
    with srv.client() as c:
        kept = c.get(f"/api/runs/{run['id']}").json()
        stored = c.get(f"/api/runs/{run['id']}/events").json()
    assert kept["status"] == "succeeded" and kept["workspace"] is None
    notices = [e["data"]["message"] for e in stored if e["type"] == "run.notice"]
    assert any("removed the run's files" in n for n in notices), notices
    assert any(e["type"] == "agent.result" for e in stored)
    assert "Add hello.txt" in git(source, "log", "--format=%s", f"agentfarm/{run['id']}")
