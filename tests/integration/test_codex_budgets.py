"""A turn budget holds for Codex: the real Codex CLI in the real sandbox against the scripted
fake Responses API; agentfarm counts Codex's model turns from its stream (Codex has no
``--max-turns``) and stops the run with the budget as its reason."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import openai_api as fake
from tests.integration.server import Server
from tests.realparts import missing

pytestmark = pytest.mark.integration

KEY = "sk-codex-budget-secret-value"
MODEL = "gpt-5-codex"  # a model the CLI offers its shell tool for (test_codex_cli.py)


@pytest.fixture
def server(tmp_path: Path, codex_bin: str, fake_openai: fake.FakeOpenAI) -> Iterator[Server]:
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    srv = Server(
        tmp_path / "data",
        {"AGENTFARM_CODEX_BIN": codex_bin, "OPENAI_BASE_URL": fake_openai.base_url,
         "CODEX_API_KEY": KEY, "AGENTFARM_STOP_GRACE_SECONDS": "3"},
        tmp_path / "server.log",
    ).start()  # fmt: skip
    yield srv
    srv.stop()


def test_codex_s_max_turns_stops_the_run_with_the_budget_named(
    server: Server, source: Path, fake_openai: fake.FakeOpenAI
) -> None:
    # Three model turns scripted; the second starts a command that would run for ten minutes.
    marker = fake_openai.register(
        "codex-over-its-turns",
        [
            fake.shell("printf 'one\\n' > one.txt"),
            fake.shell("echo second; sleep 600"),
            fake.text("never reached"),
        ],
    )
    body = {"repo": str(source), "prompt": f"{marker} work", "agent": "codex", "model": MODEL,
            "max_turns": 1}  # fmt: skip
    with server.client() as c:
        response = c.post("/api/runs", json={"spec": body})
        assert response.status_code == 201, response.text
        run_id: str = response.json()["id"]
    done = server.wait_status(run_id, {"succeeded", "failed", "lost", "stopped"}, timeout=90)
    with server.client() as c:
        stored: list[dict[str, Any]] = c.get(f"/api/runs/{run_id}/events").json()
    assert done["status"] == "stopped", (done, stored)
    assert done["error"] == "turns: 1 of 1"
    notices = [e["data"]["message"] for e in stored if e["type"] == "run.notice"]
    assert "turns: 1 of 1: stopping the agent" in notices
    calls = [e["data"]["input"]["command"] for e in stored if e["type"] == "agent.tool_call"]
    assert len(calls) == 2 and "sleep 600" in calls[1]
    assert not [e for e in stored if e["type"] == "agent.result"]  # stopped within its turn
