"""Talking to a running agent end to end: a real server with the local backend (bubblewrap),
the real Claude Code CLI against the scripted fake model, the API and the CLI.

A follow-up in the middle of a turn and one after the first result (within the config's
follow-up window) are both answered in the same session; an interrupt ends the running turn
and the run goes on to take a message; a window nobody uses ends the run on its last answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api as fake
from tests.integration.conftest import git
from tests.integration.server import Server
from tests.integration.test_e2e import events
from tests.integration.test_e2e import server as server  # the fixture
from tests.integration.test_parking import start_server as start_server  # the fixture

pytestmark = pytest.mark.integration

#: Hang guard only: every wait ends on an event long before this.
GUARD = 90.0
#: A Bash tool that waits until the test creates ``.go`` in the workspace: a turn that is
#: surely still running while the test sends its follow-up.
GATE = {
    "command": "until [ -e .go ]; do sleep 0.1; done; echo released",
    "description": "Wait for the gate",
    "timeout": 600_000,
}


def wait_for(srv: Server, run_id: str, check: Callable[[list[dict[str, Any]]], bool]) -> None:
    deadline = time.monotonic() + GUARD
    while True:
        seen = events(srv, run_id)
        if check(seen):
            return
        assert time.monotonic() < deadline, seen
        time.sleep(0.1)


def of_type(seen: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in seen if e["type"] == kind]


def launch(srv: Server, source: Path, prompt: str, **fields: Any) -> dict[str, Any]:
    with srv.client() as c:
        spec = {"repo": str(source), "prompt": prompt,
                "env": {"CLAUDE_CODE_MAX_RETRIES": "0"}, **fields}  # fmt: skip
        response = c.post("/api/runs", json={"spec": spec})
        assert response.status_code == 201, response.text
        run: dict[str, Any] = response.json()
    srv.wait_status(run["id"], {"running"}, timeout=GUARD)
    return run


@pytest.fixture
def scenario(fake_anthropic: fake.FakeAnthropic) -> Callable[..., str]:
    def register(*turns: fake.Turn) -> str:
        return fake_anthropic.register(f"converse-{time.time_ns()}", turns)

    return register


def test_a_follow_up_in_the_middle_of_a_turn_is_answered_in_the_same_session(
    server: Server, source: Path, scenario: Callable[..., str], fake_anthropic: fake.FakeAnthropic
) -> None:
    marker = scenario(fake.tool_use("Bash", GATE), fake.text("Answered both."))
    run = launch(server, source, f"{marker} wait at the gate")
    wait_for(server, run["id"], lambda seen: bool(of_type(seen, "agent.tool_call")))
    sent = server.cli("send", run["id"], "-", input="and then the second thing\n")
    assert sent.returncode == 0, sent.stderr
    workspace = Path(server.wait_status(run["id"], {"running"})["workspace"])
    (workspace / ".go").touch()
    done = server.wait_status(run["id"], {"succeeded", "failed", "stopped"}, timeout=GUARD)
    seen = events(server, run["id"])
    assert done["status"] == "succeeded", seen
    # Claude Code takes a message sent while a tool runs into the running turn: the model's
    # next request carries it, and that one turn's answer ends the run (no window).
    assert [r["result"] for r in of_type(seen, "agent.result")] == ["Answered both."]
    (after_tool,) = [r for r in fake_anthropic.requests_for(marker[10:-1]) if r.turn == 1]
    assert "and then the second thing" in json.dumps(after_tool.body["messages"])
    assert of_type(seen, "user.message") == [{"text": "and then the second thing\n"}]
    sessions = {i["session_id"] for i in of_type(seen, "agent.init")}
    assert sessions == {done["session_id"]}
    assert not of_type(seen, "run.waiting")


def test_a_follow_up_within_the_window_starts_a_new_turn(
    server: Server, source: Path, scenario: Callable[..., str]
) -> None:
    marker = scenario(fake.text("First answer."), fake.text("Second answer."))
    run = launch(server, source, f"{marker} first question", followup_window_seconds=600)
    wait_for(server, run["id"], lambda seen: bool(of_type(seen, "run.waiting")))
    assert of_type(events(server, run["id"]), "run.waiting") == [{"seconds": 600.0}]
    with server.client() as c:
        sent = c.post(f"/api/runs/{run['id']}/messages", json={"text": "a second question"})
        assert sent.status_code == 202, sent.text
        wait_for(server, run["id"], lambda seen: len(of_type(seen, "run.waiting")) == 2)
        idle = c.post(f"/api/runs/{run['id']}/interrupt")
        assert idle.status_code == 409
        assert "no turn is running" in idle.json()["error"]["message"]
        assert c.get(f"/api/runs/{run['id']}").json()["status"] == "running"
        c.post(f"/api/runs/{run['id']}/stop")
    server.wait_status(run["id"], {"stopped"}, timeout=GUARD)
    seen = events(server, run["id"])
    results = [r["result"] for r in of_type(seen, "agent.result")]
    assert results == ["First answer.", "Second answer."]
    assert len({i["session_id"] for i in of_type(seen, "agent.init")}) == 1


def test_a_window_nobody_uses_ends_the_run_on_its_answer(
    server: Server, source: Path, scenario: Callable[..., str]
) -> None:
    marker = scenario(fake.text("The only answer."))
    run = launch(server, source, f"{marker} one question", followup_window_seconds=1)
    done = server.wait_status(run["id"], {"succeeded", "failed", "stopped"}, timeout=GUARD)
    seen = events(server, run["id"])
    assert done["status"] == "succeeded", seen
    notices = [n["message"] for n in of_type(seen, "run.notice")]
    assert "no follow-up came within 1 s: the agent ends on its last answer" in notices
    with server.client() as c:
        late = c.post(f"/api/runs/{run['id']}/messages", json={"text": "too late"})
    assert late.status_code == 409 and "has ended (succeeded)" in late.text


def test_an_interrupt_ends_the_turn_and_the_run_takes_a_message(
    server: Server, source: Path, scenario: Callable[..., str]
) -> None:
    marker = scenario(fake.tool_use("Bash", GATE), fake.text("Did the other thing."))
    run = launch(server, source, f"{marker} wait at the gate forever")
    wait_for(server, run["id"], lambda seen: bool(of_type(seen, "agent.tool_call")))
    time.sleep(0.5)  # not an assertion: lets the Bash tool start before the interrupt
    interrupted = server.cli("interrupt", run["id"])
    assert interrupted.returncode == 0, interrupted.stderr
    wait_for(server, run["id"], lambda seen: bool(of_type(seen, "run.waiting")))
    seen = events(server, run["id"])
    (first,) = of_type(seen, "agent.result")
    assert first["subtype"] == "error_during_execution"
    assert server.wait_status(run["id"], {"running"})["status"] == "running"
    sent = server.cli("send", run["id"], "never mind, do the other thing")
    assert sent.returncode == 0, sent.stderr
    done = server.wait_status(run["id"], {"succeeded", "failed", "stopped"}, timeout=GUARD)
    seen = events(server, run["id"])
    assert done["status"] == "succeeded", seen
    last = of_type(seen, "agent.result")[-1]
    assert last["result"] == "Did the other thing." and not last["is_error"]
    assert [e["type"] for e in seen].count("user.interrupt") == 1


def test_a_run_waiting_for_a_follow_up_survives_a_server_kill9(
    server: Server, source: Path, scenario: Callable[..., str]
) -> None:
    marker = scenario(fake.text("First answer."), fake.text("Second answer."))
    run = launch(server, source, f"{marker} first question", followup_window_seconds=600)
    wait_for(server, run["id"], lambda seen: bool(of_type(seen, "run.waiting")))
    server.kill()  # the agent and its monitor stay; the new server reattaches
    server.start()
    assert server.wait_status(run["id"], {"running"})["status"] == "running"
    sent = server.cli("send", run["id"], "a question after the restart")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(server, run["id"], lambda seen: len(of_type(seen, "run.waiting")) == 2)
    with server.client() as c:
        c.post(f"/api/runs/{run['id']}/stop")
    server.wait_status(run["id"], {"stopped"}, timeout=GUARD)
    seen = events(server, run["id"])
    assert [r["result"] for r in of_type(seen, "agent.result")] == [
        "First answer.",
        "Second answer.",
    ]
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))


def test_a_usage_limit_parks_the_run_at_once_whatever_its_window(
    start_server: Callable[..., Server], source: Path, scenario: Callable[..., str]
) -> None:
    # A subscription (OAuth) token: the CLI then reads the usage-limit headers (parking's set-up).
    srv = start_server()
    marker = scenario(
        fake.tool_use("Write", {"file_path": "before.txt", "content": "before\n"}),
        fake.usage_limit(time.time() + 3600),
    )
    run = launch(srv, source, f"{marker} a question", followup_window_seconds=600)
    # Parked well before the window would have ended (GUARD < 600 s): no window after it.
    parked = srv.wait_status(run["id"], {"parked", "succeeded", "failed"}, timeout=GUARD)
    assert parked["status"] == "parked", (parked["error"], events(srv, run["id"]))
    assert not of_type(events(srv, run["id"]), "run.waiting")
    with srv.client() as c:
        c.post(f"/api/runs/{run['id']}/stop")
    srv.wait_status(run["id"], {"stopped"}, timeout=GUARD)


def test_an_ended_run_is_continued_with_a_new_prompt_in_its_session_and_branch(
    server: Server, source: Path, scenario: Callable[..., str]
) -> None:
    commit = {"command": "git add -A && git commit -q -m 'second file'", "description": "c"}
    marker = scenario(
        fake.tool_use("Write", {"file_path": "first.txt", "content": "one\n"}),
        fake.tool_use("Bash", {**commit, "command": "git add -A && git commit -q -m 'first'"}),
        fake.text("First done."),
        fake.tool_use("Write", {"file_path": "second.txt", "content": "two\n"}),
        fake.tool_use("Bash", commit),
        fake.text("Second done."),
    )
    run = launch(server, source, f"{marker} write the first file")
    first = server.wait_status(run["id"], {"succeeded", "failed", "stopped"}, timeout=GUARD)
    assert first["status"] == "succeeded", events(server, run["id"])
    resumed = server.cli("resume", run["id"], "now write the second file")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    done = server.wait_status(run["id"], {"succeeded", "failed", "stopped"}, timeout=GUARD)
    seen = events(server, run["id"])
    assert done["status"] == "succeeded", seen
    assert [r["result"] for r in of_type(seen, "agent.result")] == ["First done.", "Second done."]
    sessions = {i["session_id"] for i in of_type(seen, "agent.init")}
    assert sessions == {first["session_id"]} == {done["session_id"]}
    assert done["workspace"] == first["workspace"]
    assert done["cost_usd"] > first["cost_usd"]
    log = git(source, "log", "--format=%s", f"agentfarm/{run['id']}").split("\n")
    assert log[:3] == ["second file", "first", "initial"]
    statuses = [e["data"]["status"] for e in seen if e["type"] == "run.status"]
    assert statuses == ["queued", "starting", "running", "succeeded",
                        "starting", "running", "succeeded"]  # fmt: skip
    with server.client() as c:
        bare = c.post(f"/api/runs/{run['id']}/resume")
    assert bare.status_code == 409 and "with a new prompt" in bare.text
