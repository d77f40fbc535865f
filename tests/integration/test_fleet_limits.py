"""Queue limits and budgets end to end: a real server, the real local backend (bubblewrap),
the real Claude Code CLI against the fake model, which reports what each reply cost."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api as fake
from tests.integration.server import Server

pytestmark = pytest.mark.integration

#: Hang guard only: every wait below ends on a state change long before this.
GUARD = 120.0


@pytest.fixture
def server(
    claude_bin: str, fake_anthropic: fake.FakeAnthropic, serve: Callable[[dict[str, str]], Server]
) -> Server:
    return serve(
        {
            "AGENTFARM_CLAUDE_BIN": claude_bin,
            "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-fleet-secret-value",
            "AGENTFARM_STOP_GRACE_SECONDS": "3",
            "AGENTFARM_MAX_CONCURRENT_RUNS": "1",
            "AGENTFARM_MAX_QUEUED_RUNS": "1",
        }
    )


def launch(srv: Server, source: Path, prompt: str, **spec: Any) -> Any:
    body = {"spec": {"repo": str(source), "prompt": prompt, **spec}}
    body["spec"]["env"] = {"CLAUDE_CODE_MAX_RETRIES": "0"}
    with srv.client() as c:
        return c.post("/api/runs", json=body)


def get(srv: Server, run_id: str) -> dict[str, Any]:
    with srv.client() as c:
        run: dict[str, Any] = c.get(f"/api/runs/{run_id}").json()
        return run


def until_status(srv: Server, run_id: str, *wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + GUARD
    while True:
        run = get(srv, run_id)
        if run["status"] in wanted:
            return run
        assert time.monotonic() < deadline, f"run {run_id} is still {run['status']}"
        time.sleep(0.1)


def test_a_dollar_budget_crossed_mid_run_stops_it_with_the_reason(
    server: Server, source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    # The first reply costs a million input tokens ($1 or more at any model's list price),
    # then asks for a long tool run: the budget is crossed in the middle of the run.
    marker = fake_anthropic.register(
        "costly-then-sleep",
        [
            fake.costly(
                1_000_000,
                fake.tool_use(
                    "Bash",
                    {
                        "command": "echo working; sleep 600",
                        "description": "Work",
                        "timeout": 600_000,
                    },
                ),
            ),
            fake.text("Done."),
        ],
    )
    created = launch(server, source, f"{marker} do costly work", max_budget_usd=0.5)
    assert created.status_code == 201, created.text
    run = until_status(server, created.json()["id"], "stopped", "failed", "succeeded", "lost")
    assert run["status"] == "stopped", run
    assert re.fullmatch(r"budget: \$\d+\.\d\d spent of \$0\.50", run["error"]), run["error"]
    with server.client() as c:
        events = c.get(f"/api/runs/{run['id']}/events").json()
    notices = [e["data"]["message"] for e in events if e["type"] == "run.notice"]
    tools = [e["data"]["name"] for e in events if e["type"] == "agent.tool_call"]
    # agentfarm stopped it from the streamed cost while the tool ran (the CLI's own
    # --max-budget-usd would only look after the tool).
    assert notices[-1] == f"{run['error']}: stopping the agent"
    assert tools == ["Bash"]
    # What it cost counts toward the day's spend, though the CLI never reported a figure.
    assert run["cost_usd"] >= 0.5
    with server.client() as c:
        assert c.get("/api/spend").json()["today_usd"] == pytest.approx(run["cost_usd"])
    shown = server.cli("spend")
    assert f"today ${run['cost_usd']:.4f}" in shown.stdout, shown.stdout + shown.stderr


def test_a_queue_over_its_limit_answers_429_and_evicts_nothing(
    server: Server, source: Path
) -> None:
    running = launch(server, source, f"{fake.marker('sleep')} wait")
    assert running.status_code == 201, running.text
    first = until_status(server, running.json()["id"], "running")
    queued = launch(server, source, f"{fake.marker('hello')} later")
    assert queued.status_code == 201, queued.text
    place = queued.json()["queue"]
    assert place == {"position": 1, "length": 1, "waiting_for": "global cap 1/1"}
    refused = launch(server, source, f"{fake.marker('hello')} one too many")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "queue_full" and (error["limit"], error["count"]) == (1, 1)
    assert get(server, first["id"])["status"] == "running"
    assert get(server, queued.json()["id"])["status"] == "queued"
    listed = server.cli("ls")
    assert "waiting for global cap 1/1" in listed.stdout, listed.stdout + listed.stderr
    with server.client() as c:
        c.post(f"/api/runs/{first['id']}/stop")
    until_status(server, first["id"], "stopped")
    assert until_status(server, queued.json()["id"], "succeeded")["status"] == "succeeded"
