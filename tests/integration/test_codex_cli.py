"""Codex end to end: a real server process, the real Codex CLI in the real bubblewrap sandbox
(through its egress proxy) against the scripted fake Responses API on loopback, real git."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import openai_api as fake
from tests.integration.conftest import git
from tests.integration.server import Server, events, post_run

pytestmark = pytest.mark.integration

KEY = "sk-codex-e2e-secret-value"
#: A model the CLI knows the tools of; with its own default (a newer model) it offers the fake
#: no shell tool.
MODEL = "gpt-5-codex"


@pytest.fixture
def server(
    codex_bin: str, fake_openai: fake.FakeOpenAI, serve: Callable[[dict[str, str]], Server]
) -> Server:
    return serve(
        {
            "AGENTFARM_CODEX_BIN": codex_bin,
            "OPENAI_BASE_URL": fake_openai.base_url,
            "CODEX_API_KEY": KEY,
            "AGENTFARM_STOP_GRACE_SECONDS": "3",
        }
    )


def launch(srv: Server, source: Path, prompt: str, **spec: Any) -> str:
    body = {"repo": str(source), "prompt": prompt, "agent": "codex", "model": MODEL, **spec}
    run_id: str = post_run(srv, {"spec": body})["id"]
    return run_id


def wait_for_event(srv: Server, run_id: str, kind: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(e["type"] == kind for e in events(srv, run_id)):
        assert time.monotonic() < deadline, events(srv, run_id)
        time.sleep(0.1)


def test_a_codex_run_commits_on_its_branch_with_an_estimated_cost(
    server: Server, source: Path
) -> None:
    prompt = f"{fake.marker('write-and-commit')} add a hello file"
    result = server.cli(
        "config", "add", "codexer", "--repo", str(source), "--prompt", prompt, "--agent", "codex",
        "--model", MODEL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = server.cli("run", "codexer")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.split()[1]
    run = server.wait_status(run_id, {"succeeded", "failed", "lost"}, timeout=60)
    assert run["status"] == "succeeded", (run, events(server, run_id))
    assert git(source, "log", "--format=%s", f"agentfarm/{run_id}").splitlines() == [
        "Add hello.txt",
        "initial",
    ]
    assert git(source, "show", f"agentfarm/{run_id}:hello.txt") == "Hello from agentfarm.\n"
    assert run["usage"]["output_tokens"] > 0 and run["num_turns"] == 1
    assert run["cost_usd"] > 0 and run["cost_estimated"] is True
    assert "(estimate)" in result.stdout
    stored = events(server, run_id)
    calls = [e["data"]["input"]["command"] for e in stored if e["type"] == "agent.tool_call"]
    assert len(calls) == 2 and "hello.txt" in calls[0]
    (final,) = [e["data"] for e in stored if e["type"] == "agent.result"]
    assert final["cost_estimated"] is True and final["result"].startswith("I wrote hello.txt")
    assert "codex" in server.cli("ls").stdout
    # Codex makes no calls of its own beyond the model (no update check, plugins, analytics),
    # and, its prompt on stdin, has nothing to say on stderr.
    assert not [e for e in stored if e["type"] in ("sandbox.egress_denied", "agent.stderr")]
    everything = json.dumps(stored) + server.log.read_text() + result.stdout + result.stderr
    assert KEY not in everything


def test_stop_ends_a_codex_run_in_a_long_command(server: Server, source: Path) -> None:
    run_id = launch(server, source, f"{fake.marker('sleep')} wait")
    wait_for_event(server, run_id, "agent.tool_call")
    result = server.cli("stop", run_id)
    assert result.returncode == 0, result.stderr
    done = server.wait_status(run_id, {"stopped", "failed", "succeeded"}, timeout=30)
    assert done["status"] == "stopped", done
    leftovers = subprocess.run(
        ["pgrep", "-f", f"runs/{run_id}"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == []


def test_kill9_midrun_then_restart_finishes_the_run(
    server: Server, source: Path, fake_openai: fake.FakeOpenAI
) -> None:
    marker = fake_openai.register(
        "codex-slow-commit",
        [
            fake.shell("printf 'slow\\n' > slow.txt", delay=1.5),
            fake.shell("git add -A && git commit -q -m 'slow work'", delay=1.5),
            fake.text("committed", delay=1.0),
        ],
    )
    run_id = launch(server, source, f"{marker} go slowly")
    wait_for_event(server, run_id, "agent.init")
    server.kill()
    server.start()
    done = server.wait_status(run_id, {"succeeded", "failed", "lost"}, timeout=60)
    assert done["status"] == "succeeded", (done, events(server, run_id))
    stored = events(server, run_id)
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    kinds = [e["type"] for e in stored]
    assert kinds.count("agent.init") == 1 and kinds.count("agent.result") == 1
    calls = [e["data"]["id"] for e in stored if e["type"] == "agent.tool_call"]
    assert len(calls) == len(set(calls)) == 2
    assert "slow work" in git(source, "log", "--format=%s", f"agentfarm/{run_id}")


@pytest.mark.parametrize(
    ("scenario", "words"),
    # After its retries, Codex reports a 5xx in its own words, without the body or status.
    [("api-error", "Bad request (scripted)"), ("server-error", "The model API call failed")],
)
def test_an_api_error_fails_the_run_with_a_readable_reason(
    server: Server, source: Path, scenario: str, words: str
) -> None:
    run_id = launch(server, source, f"{fake.marker(scenario)} anything")
    done = server.wait_status(run_id, {"succeeded", "failed", "lost"}, timeout=90)
    assert done["status"] == "failed", done
    error = done["error"]
    assert words in error and "CODEX_API_KEY" in error and "{" not in error, error
    assert KEY not in error


def test_a_followup_resumes_the_thread_in_the_same_workspace(
    server: Server, source: Path, fake_openai: fake.FakeOpenAI
) -> None:
    marker = fake_openai.register(
        "codex-two-answers",
        [
            fake.shell("echo first > first.txt", delay=1.5),
            fake.text("First answer."),
            fake.shell("cat first.txt && git add -A && git commit -q -m 'both turns'"),
            fake.text("Second answer."),
        ],
    )
    run_id = launch(server, source, f"{marker} first question")
    wait_for_event(server, run_id, "agent.init")
    with server.client() as c:
        sent = c.post(f"/api/runs/{run_id}/messages", json={"text": "now commit it"})
        assert sent.status_code in (200, 202, 204), sent.text
    done = server.wait_status(run_id, {"succeeded", "failed", "lost"}, timeout=60)
    assert done["status"] == "succeeded", (done, events(server, run_id))
    stored = events(server, run_id)
    results = [e["data"]["result"] for e in stored if e["type"] == "agent.result"]
    assert results == ["First answer.", "Second answer."]
    # Two processes, one thread: `codex exec resume <thread id>` gives the same session.
    inits = [e["data"]["session_id"] for e in stored if e["type"] == "agent.init"]
    assert len(inits) == 2 and inits[0] == inits[1] == done["session_id"]
    assert done["num_turns"] == 2
    # The second turn ran in the first one's workspace: it found first.txt and committed it.
    outputs = [e["data"]["content"] for e in stored if e["type"] == "agent.tool_result"]
    assert "first" in outputs[-1]
    assert git(source, "show", f"agentfarm/{run_id}:first.txt") == "first\n"
    # The resumed turn sent the whole conversation: the first answer is in its input.
    requests = fake_openai.requests_for("codex-two-answers")
    assert "First answer." in json.dumps(requests[-1].body)
    assert any(e["type"] == "user.message" for e in stored)


def test_a_codex_binary_that_is_not_there_fails_the_run_saying_which_setting(
    tmp_path: Path, source: Path, fake_openai: fake.FakeOpenAI
) -> None:
    """The end-to-end path of a missing CLI (the search order and the `make codex` sentence
    are tested in test_local_binaries.py: this checkout's .tools would be found here)."""
    missing = tmp_path / "no-codex-here"
    srv = Server(
        tmp_path / "data",
        {"AGENTFARM_CODEX_BIN": str(missing), "OPENAI_BASE_URL": fake_openai.base_url,
         "CODEX_API_KEY": KEY},
        tmp_path / "server.log",
    ).start()  # fmt: skip
    try:
        run_id = launch(srv, source, "anything")
        done = srv.wait_status(run_id, {"succeeded", "failed", "lost"}, timeout=30)
    finally:
        srv.stop()
    assert done["status"] == "failed", done
    assert f"AGENTFARM_CODEX_BIN={missing} is not an executable file" in done["error"], done
