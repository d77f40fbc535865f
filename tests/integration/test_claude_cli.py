"""The real Claude Code CLI (no sandbox) against the fake model, driven by the adapter's own
command and parsed by its parser: what the rest of agentfarm relies on, checked end to end."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfarm.agents import base, claude
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand
from tests.conftest import AgentEnv
from tests.fakes import anthropic_api as fake

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


class LiveAgent:
    """One CLI process: stdout lines go through the parser on a thread, as the supervisor
    does; the test waits for line types and writes to stdin."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, stdin: bytes) -> None:
        self.parser = claude.ClaudeAdapter().new_parser()
        self.drafts: list[models.EventDraft] = []
        self.types: queue.Queue[str] = queue.Queue()
        self.stderr: list[bytes] = []
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.send(stdin)

    def _read_stdout(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.drafts.extend(self.parser.feed_stdout(line.rstrip(b"\n")))
            try:
                kind = json.loads(line).get("type")
            except ValueError:
                kind = None
            self.types.put(str(kind))
        self.types.put("<eof>")

    def _read_stderr(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.drafts.extend(self.parser.feed_stderr(line.rstrip(b"\n")))

    def send(self, data: bytes) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_for(self, kind: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            seen = self.types.get(timeout=max(0.1, deadline - time.monotonic()))
            if seen == kind:
                return
            assert seen != "<eof>", f"the agent exited before {kind}: {self.stderr}"

    def close_stdin(self) -> int:
        """Close stdin (what the backend does after a ``result``) and wait for the exit."""
        assert self.proc.stdin
        self.proc.stdin.close()
        code = self.proc.wait(timeout=TIMEOUT)
        for thread in self._threads:
            thread.join(timeout=TIMEOUT)
        return code

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [d.data for d in self.drafts if d.type == kind]

    def dispose(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(
        ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@e",
         "commit", "-q", "--allow-empty", "-m", "initial"],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture
def start(claude_bin: str, agent_env: AgentEnv, repo: Path) -> Iterator[Any]:
    """``start(prompt, **spec fields)`` -> a running :class:`LiveAgent`."""
    agents: list[LiveAgent] = []

    def launch(prompt: str, env_extra: dict[str, str] | None = None, **fields: Any) -> LiveAgent:
        spec = models.AgentSpec(repo=str(repo), prompt=prompt, **fields)
        command: AgentCommand = claude.ClaudeAdapter().build_command(spec, binary=claude_bin)
        # Root may only bypass permissions in a declared sandbox; agentfarm itself runs the
        # agent as a non-root uid, so this is for the direct-CLI tests only.
        env = agent_env(**command.env, IS_SANDBOX="1", **(env_extra or {}))
        agent = LiveAgent(command.argv, env, repo, command.stdin)
        agents.append(agent)
        return agent

    yield launch
    for agent in agents:
        agent.dispose()


def git_log(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "log", "--format=%s"], check=True, capture_output=True, text=True
    )
    return out.stdout.splitlines()


def test_write_and_commit(start: Any, repo: Path) -> None:
    agent = start(f"{fake.marker('write-and-commit')} add a greeting")
    agent.wait_for("result")
    began = time.monotonic()
    assert agent.close_stdin() == 0
    assert time.monotonic() - began < 5, "closing stdin after the result should end the CLI"
    assert git_log(repo) == ["Add hello.txt", "initial"]
    assert (repo / "hello.txt").read_text() == "Hello from agentfarm.\n"
    (init,) = agent.of_type("agent.init")
    assert init["cwd"] == str(repo) and init["permission_mode"] == "bypassPermissions"
    assert [c["name"] for c in agent.of_type("agent.tool_call")] == ["Write", "Bash"]
    assert not agent.of_type("agent.unparsed")
    summary = agent.parser.summary
    assert summary.session_id == init["session_id"]
    assert summary.num_turns == 3
    assert summary.cost_usd is not None and summary.cost_usd > 0
    assert summary.usage.input_tokens > 0 and summary.usage.output_tokens > 0
    outcome = agent.parser.finish(0, None, stopped=False)
    assert outcome == base.Outcome(models.RunStatus.succeeded)


def test_api_error_fails_with_the_status(start: Any, fake_anthropic: fake.FakeAnthropic) -> None:
    agent = start(f"{fake.marker('api-error')} anything")
    agent.wait_for("result")
    code = agent.close_stdin()
    (result,) = agent.of_type("agent.result")
    assert result["is_error"] is True and result["api_error_status"] == 500
    outcome = agent.parser.finish(code, None, stopped=False)
    assert outcome.status == models.RunStatus.failed
    assert outcome.error and outcome.error.startswith("The model API returned HTTP 500")
    # The adapter bounds the CLI's retries (CLAUDE_CODE_MAX_RETRIES=2): three requests in all.
    retries = [s for s in agent.of_type("agent.system") if s["subtype"] == "api_retry"]
    assert len(retries) == 2
    assert retries[0]["error_status"] == 500


def test_followup_on_stdin_starts_a_second_turn(
    start: Any, fake_anthropic: fake.FakeAnthropic
) -> None:
    marker = fake_anthropic.register(
        "two-answers", [fake.text("First answer."), fake.text("Second answer.")]
    )
    agent = start(f"{marker} first question")
    agent.wait_for("result")
    agent.send(claude.ClaudeAdapter().followup("a follow-up question"))
    agent.wait_for("result")
    assert agent.close_stdin() == 0
    first, second = agent.of_type("agent.result")
    assert (first["result"], second["result"]) == ("First answer.", "Second answer.")
    # Verified here: cost is cumulative per process, usage and turns are per result.
    assert second["cost_usd"] > first["cost_usd"]
    summary = agent.parser.summary
    assert summary.cost_usd == second["cost_usd"]
    assert summary.num_turns == 2
    total = first["usage"]["input_tokens"] + second["usage"]["input_tokens"]
    assert summary.usage.input_tokens == total
    requests = fake_anthropic.requests_for("two-answers")
    assert [r.turn for r in requests[-2:]] == [0, 1]
    assert agent.parser.finish(0, None, stopped=False).status == models.RunStatus.succeeded


def test_interrupt_stops_a_long_tool(start: Any) -> None:
    agent = start(f"{fake.marker('sleep')} wait")
    agent.wait_for("assistant")
    time.sleep(1.0)  # let the Bash tool start its sleep
    agent.send(claude.ClaudeAdapter().interrupt())
    agent.wait_for("result")
    agent.close_stdin()
    (result,) = agent.of_type("agent.result")
    assert result["subtype"] == "error_during_execution"
    responses = [s for s in agent.of_type("agent.system") if s["subtype"] == "control_response"]
    assert responses and responses[0]["response"]["subtype"] == "success"
    assert agent.parser.finish(0, None, stopped=True).status == models.RunStatus.stopped


def test_allowed_tool_rules_accumulate(start: Any, repo: Path) -> None:
    # Without bypass, only the listed tools may run: both rules must reach the CLI.
    agent = start(
        f"{fake.marker('write-and-commit')} add a greeting",
        permission_mode="default",
        allowed_tools=["Write", "Bash(git *)"],
    )
    agent.wait_for("result")
    assert agent.close_stdin() == 0
    (result,) = agent.of_type("agent.result")
    assert result["permission_denials"] == []
    assert git_log(repo)[0] == "Add hello.txt"


def test_disallowed_tool_is_denied(start: Any, repo: Path) -> None:
    agent = start(f"{fake.marker('write-and-commit')} add a greeting", disallowed_tools=["Bash"])
    agent.wait_for("result")
    assert agent.close_stdin() == 0
    (init,) = agent.of_type("agent.init")
    assert "Bash" not in init["tools"]
    bash_result = agent.of_type("agent.tool_result")[1]
    assert bash_result["is_error"] is True
    assert git_log(repo) == ["initial"]


def test_a_usage_limit_is_reported_and_the_session_resumes_after_it(
    start: Any, fake_anthropic: fake.FakeAnthropic, claude_bin: str, agent_env: AgentEnv, repo: Path
) -> None:
    lifted: list[bool] = []

    def scenario(_arg: str | None) -> list[fake.Turn]:
        turns = [fake.tool_use("Write", {"file_path": "before.txt", "content": "1\n"})]
        if not lifted:
            turns.append(fake.usage_limit(time.time() + 3600))
        return [*turns, fake.text("All done.")]

    marker = fake_anthropic.register("cli-usage-limit", scenario)
    # The CLI reports a usage limit only on a subscription token.
    subscription = {"ANTHROPIC_API_KEY": "", "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-test-0"}
    agent = start(f"{marker} write a file", env_extra=subscription)
    agent.wait_for("result")
    code = agent.close_stdin()
    (limit,) = [d for d in agent.of_type("agent.rate_limit") if d["status"] == "rejected"]
    assert limit["source"] == "event" and limit["limit_type"] == "five_hour"
    assert limit["resets_at"] == pytest.approx(time.time() + 3600, abs=60)
    summary = agent.parser.summary
    assert summary.usage_limit is not None and summary.usage_limit.rejected
    assert agent.parser.finish(code, None, stopped=False).status == models.RunStatus.failed
    session = summary.session_id
    assert session is not None and (repo / "before.txt").exists()

    lifted.append(True)
    spec = models.AgentSpec(repo=str(repo), prompt="unused")
    command = claude.ClaudeAdapter().resume_command(spec, session, "Continue.", binary=claude_bin)
    env = agent_env(**command.env, IS_SANDBOX="1", **subscription)
    again = LiveAgent(list(command.argv), env, repo, command.stdin)
    try:
        again.wait_for("result")
        assert again.close_stdin() == 0
        (init,) = again.of_type("agent.init")
        assert init["session_id"] == session
        (result,) = again.of_type("agent.result")
        assert result["result"] == "All done." and not result["is_error"]
        assert again.parser.summary.usage_limit is None
    finally:
        again.dispose()
