"""A turn budget holds for Codex: the real Codex CLI in the real sandbox against the scripted
fake Responses API; agentfarm counts Codex's model turns from its stream (Codex has no
``--max-turns``) and stops the run with the budget as its reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes import openai_api as fake
from tests.integration.server import Server, events, post_run

pytestmark = pytest.mark.integration

KEY = "sk-codex-budget-secret-value"
MODEL = "gpt-5-codex"  # a model the CLI offers its shell tool for (test_codex_cli.py)


@pytest.fixture
def server(
    codex_bin: str, fake_openai: fake.FakeOpenAI, serve: Callable[[dict[str, str]], Server]
) -> Server:
    return serve(
        {"AGENTFARM_CODEX_BIN": codex_bin, "OPENAI_BASE_URL": fake_openai.base_url,
         "CODEX_API_KEY": KEY, "AGENTFARM_STOP_GRACE_SECONDS": "3"}
    )  # fmt: skip


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
    run_id: str = post_run(server, {"spec": body})["id"]
    done = server.wait_status(run_id, {"succeeded", "failed", "lost", "stopped"}, timeout=90)
    stored = events(server, run_id)
    assert done["status"] == "stopped", (done, stored)
    assert done["error"] == "turns: 1 of 1"
    notices = [e["data"]["message"] for e in stored if e["type"] == "run.notice"]
    assert "turns: 1 of 1: stopping the agent" in notices
    calls = [e["data"]["input"]["command"] for e in stored if e["type"] == "agent.tool_call"]
    assert len(calls) == 2 and "sleep 600" in calls[1]
    assert not [e for e in stored if e["type"] == "agent.result"]  # stopped within its turn
