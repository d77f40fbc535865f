"""Notifications end to end: a real server, the real local backend (bubblewrap, git) and a
command agent; Apprise sends to a JSON endpoint on a loopback port."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fakes.json_endpoint import JsonEndpoint
from tests.integration.server import Server
from tests.realparts import missing

pytestmark = pytest.mark.integration

PUBLIC = "https://farm.example.org"


def test_a_finished_run_sends_one_message_with_its_link_and_a_hanging_target_holds_nothing(
    tmp_path: Path, source: Path, endpoint: JsonEndpoint
) -> None:
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    env = {
        "AGENTFARM_NOTIFY_URLS": f"{endpoint.url('/hang')}, {endpoint.url('/hook')}",
        "AGENTFARM_PUBLIC_URL": PUBLIC,
        "AGENTFARM_NOTIFY_TIMEOUT_SECONDS": "120",
    }
    srv = Server(tmp_path / "data", env, tmp_path / "server.log").start()
    try:
        spec = {"repo": str(source), "prompt": "hello", "agent": "command",
                "command": {"argv": ["sh", "-c", "echo done"], "prompt": "none"}}  # fmt: skip
        with srv.client() as c:
            made = c.post("/api/runs", json={"spec": spec})
            assert made.status_code == 201, made.text
            run_id = made.json()["id"]
        run = srv.wait_status(run_id, {"succeeded", "failed"}, timeout=60)
        assert run["status"] == "succeeded", run
        got = endpoint.wait_for(2)
        # The hanging target holds its request; the run had ended and was stored before.
        assert sorted(r.path for r in got) == ["/hang", "/hook"]
        with srv.client() as c:
            assert c.get(f"/api/runs/{run_id}").json()["status"] == "succeeded"
        [message] = [r.json() for r in got if r.path == "/hook"]
        assert message["title"] == f"agentfarm: run {run_id} succeeded"
        assert message["message"].splitlines()[-1] == f"{PUBLIC}/runs/{run_id}"
    finally:
        endpoint.release()
        srv.stop()
    assert [r.path for r in endpoint.received].count("/hook") == 1


def test_the_cli_lists_the_targets_and_sends_a_test(tmp_path: Path, endpoint: JsonEndpoint) -> None:
    env = {"AGENTFARM_NOTIFY_URLS": endpoint.url("/hook/cli-secret-token-9")}
    srv = Server(tmp_path / "data", env, tmp_path / "server.log").start()
    try:
        listed = srv.cli("notify", "ls")
        assert listed.returncode == 0, listed.stderr
        assert "json://127.0.0.1  (from AGENTFARM_NOTIFY_URLS)" in listed.stdout
        assert "cli-secret-token-9" not in listed.stdout
        tested = srv.cli("notify", "test")
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert tested.stdout.strip() == "json://127.0.0.1: sent"
        [got] = endpoint.wait_for(1)
        assert got.json()["title"] == "agentfarm: test notification"
    finally:
        srv.stop()
    assert "cli-secret-token-9" not in (tmp_path / "server.log").read_text()
