"""The generic command agent end to end: a real server, the real local backend, real
bubblewrap and real git, with shell scripts as agents."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import agent_script as script
from tests.integration.conftest import git
from tests.integration.server import Server, events, post_run

pytestmark = pytest.mark.integration

SECRET = "sk-ant-command-secret-value"
WRITER = """#!/bin/sh
set -e
[ -z "$ANTHROPIC_API_KEY" ] || { echo "the agent was handed a model key" >&2; exit 9; }
read -r prompt
echo "$prompt" > hello.txt
git add hello.txt
git -c user.name=agent -c user.email=agent@example.invalid commit -qm "$prompt"
echo "committed: $prompt"
"""


@pytest.fixture
def server(serve: Callable[[dict[str, str]], Server]) -> Server:
    return serve({"ANTHROPIC_API_KEY": SECRET, "AGENTFARM_STOP_GRACE_SECONDS": "3"})


def submit(srv: Server, source: Path, command: dict[str, Any], prompt: str) -> str:
    spec = {"repo": str(source), "prompt": prompt, "agent": "command", "command": command}
    run_id: str = post_run(srv, {"spec": spec})["id"]
    return run_id


def test_a_script_that_commits_succeeds_with_its_commit_on_the_branch(
    server: Server, source: Path, tmp_path: Path
) -> None:
    agent = script(tmp_path, WRITER)
    result = server.cli(
        "config", "add", "scripted", "--repo", str(source), "--prompt", "add a hello file",
        "--agent", "command", "--command-argv", agent, "--command-prompt", "stdin",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = server.cli("run", "scripted")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.split()[1]
    run = server.wait_status(run_id, {"succeeded", "failed"}, timeout=60)
    assert run["status"] == "succeeded", (run, events(server, run_id))
    texts = [e["data"]["text"] for e in events(server, run_id) if e["type"] == "agent.text"]
    assert texts == ["committed: add a hello file"]
    log = git(source, "log", "--format=%s", f"agentfarm/{run_id}")
    assert log.splitlines() == ["add a hello file", "initial"]
    assert git(source, "show", f"agentfarm/{run_id}:hello.txt") == "add a hello file\n"
    assert "command" in server.cli("ls").stdout


def test_a_failing_command_fails_with_its_exit_code(server: Server, source: Path) -> None:
    command = {"argv": ["sh", "-c", 'echo "no: $1" >&2; exit 3', "sh"], "prompt": "argument"}
    run_id = submit(server, source, command, "do it")
    run = server.wait_status(run_id, {"succeeded", "failed"}, timeout=60)
    assert run["status"] == "failed" and "code 3" in run["error"], run
    stderr = [e["data"]["line"] for e in events(server, run_id) if e["type"] == "agent.stderr"]
    assert "no: do it" in stderr


def test_stop_ends_a_sleeping_command(server: Server, source: Path) -> None:
    command = {"argv": ["sh", "-c", "echo sleeping; exec sleep 600"], "prompt": "none"}
    run_id = submit(server, source, command, "wait")
    deadline = time.monotonic() + 60
    while not any(e["type"] == "agent.text" for e in events(server, run_id)):
        assert time.monotonic() < deadline, events(server, run_id)
        time.sleep(0.1)
    with server.client() as c:
        refused = c.post(f"/api/runs/{run_id}/messages", json={"text": "more"})
        assert refused.status_code == 409, refused.text
    result = server.cli("stop", run_id)
    assert result.returncode == 0, result.stderr
    done = server.wait_status(run_id, {"stopped", "failed", "succeeded"}, timeout=30)
    assert done["status"] == "stopped", done
