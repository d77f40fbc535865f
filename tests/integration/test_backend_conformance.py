"""One conformance suite for every backend and agent: the fake backend in the package, and the
local one with real bubblewrap running a script, the generic command agent, the real Claude Code
CLI and the real Codex CLI (both against their fake model APIs on loopback). (The Kubernetes
backend has its own tier in tests/k8s/.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentfarm.agents import claude, codex, command
from agentfarm.agents.base import AgentAdapter
from agentfarm.backends.base import Backend, Record
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests.conftest import FAKE_API_KEY
from tests.fakes import anthropic_api, openai_api
from tests.realparts import missing

LINES = [json.dumps({"type": "line", "n": i}).encode() for i in range(20)]


@dataclass
class Kit:
    backend: Backend
    #: A fresh backend object as after a control-plane restart.
    restarted: Callable[[], Backend]
    #: (command, spec) for an agent printing LINES (or, for a real agent CLI, answering),
    #: then sleeping ``sleep`` seconds.
    agent: Callable[[float], tuple[AgentCommand, models.AgentSpec]]
    #: Checks a run's stdout lines (default: exactly LINES).
    check: Callable[[list[bytes]], None] = lambda lines: _assert_lines(lines)
    #: Stdout lines to see before a stop (the agent is busy by then).
    busy_after: int = len(LINES)
    credentials: dict[str, str] | None = None


def _assert_lines(lines: list[bytes]) -> None:
    assert lines == LINES


def fake_kit(tmp_path: Path) -> Kit:
    backend = FakeBackend()

    def agent(sleep: float) -> tuple[AgentCommand, models.AgentSpec]:
        steps = [Step("stdout", line) for line in LINES]
        if sleep:
            steps.append(Step("stdout", b"{}", delay=sleep))
        backend.script = lambda _run, _cmd: [*steps, Step("exit", exit=_exit0())]
        return AgentCommand(argv=["agent"], env={}), models.AgentSpec(repo="/r", prompt="p")

    return Kit(backend, backend.restarted, agent)


def _exit0() -> Any:
    from agentfarm.backends.base import ExitInfo

    return ExitInfo(exit_code=0)


def local_kit(tmp_path: Path, *, command_agent: bool = False) -> Kit:
    """``command_agent``: the generic command agent's adapter builds the command, with the
    prompt on stdin; the script reads stdin to its end first (so stdin must close)."""
    make, repo = _local(tmp_path)
    bindir = tmp_path / "agent"
    bindir.mkdir()
    bindir.chmod(0o755)

    def agent(sleep: float) -> tuple[AgentCommand, models.AgentSpec]:
        script = bindir / "agent.sh"
        body = "".join(f"echo '{line.decode()}'\n" for line in LINES)
        if command_agent:
            body = f"cat > /dev/null\n{body}"
        script.write_text(f"#!/bin/sh\n{body}" + (f"exec sleep {sleep}\n" if sleep else ""))
        script.chmod(0o755)
        if command_agent:
            spec = models.AgentSpec(
                repo=str(repo), prompt="p", agent="command", command={"argv": [str(script)]}
            )
            return command.CommandAdapter().build_command(spec), spec
        return AgentCommand(argv=[str(script)], env={}), models.AgentSpec(
            repo=str(repo), prompt="p"
        )

    return Kit(make(), make, agent)


def _local(tmp_path: Path, **settings: Any) -> tuple[Any, Path]:
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    from agentfarm.backends.local import LocalBackend

    config = Settings(data_dir=tmp_path / "data", **settings)
    config.ensure_dirs()
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["-c", "user.name=t", "-c", "user.email=t@e",
                 "commit", "-q", "--allow-empty", "-m", "init"]):  # fmt: skip
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    return (lambda: LocalBackend(config)), repo


def agent_cli_kit(
    tmp_path: Path,
    adapter: AgentAdapter,
    *,
    markers: tuple[str, str],
    credentials: dict[str, str],
    base_url: str | None = None,
    **fields: Any,
) -> Kit:
    """A real agent CLI in the real sandbox: ``markers`` pick the fake model's scenario for a
    short answer and for a shell command that sleeps."""
    make, repo = _local(tmp_path, claude_bin=fields.pop("claude_bin", None),
                        codex_bin=fields.pop("codex_bin", None))  # fmt: skip

    def agent(sleep: float) -> tuple[AgentCommand, models.AgentSpec]:
        prompt = f"{markers[1] if sleep else markers[0]} go"
        spec = models.AgentSpec(repo=str(repo), prompt=prompt, agent=adapter.name, **fields)
        return adapter.build_command(spec, base_url=base_url), spec

    def check(lines: list[bytes]) -> None:
        parser = adapter.new_parser()
        for line in lines:
            parser.feed_stdout(line)
        assert parser.finish(0, None, stopped=False).status == models.RunStatus.succeeded

    return Kit(make(), make, agent, check=check, busy_after=1, credentials=credentials)


KITS = ["fake", "local", "local-command-agent", "local-claude", "local-codex"]


@pytest.fixture(params=KITS)
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    if request.param == "fake":
        return fake_kit(tmp_path)
    if request.param == "local-claude":
        api: anthropic_api.FakeAnthropic = request.getfixturevalue("fake_anthropic")
        return agent_cli_kit(
            tmp_path,
            claude.ClaudeAdapter(),
            markers=(anthropic_api.marker("hello"), anthropic_api.marker("sleep")),
            credentials={"ANTHROPIC_API_KEY": FAKE_API_KEY, "ANTHROPIC_BASE_URL": api.base_url},
            claude_bin=request.getfixturevalue("claude_bin"),
        )
    if request.param == "local-codex":
        oai: openai_api.FakeOpenAI = request.getfixturevalue("fake_openai")
        return agent_cli_kit(
            tmp_path,
            codex.CodexAdapter(),
            markers=(openai_api.marker("hello"), openai_api.marker("sleep")),
            credentials={"CODEX_API_KEY": "sk-conformance-key", "OPENAI_BASE_URL": oai.base_url},
            base_url=oai.base_url,
            codex_bin=request.getfixturevalue("codex_bin"),
            model="gpt-5-codex",
        )
    return local_kit(tmp_path, command_agent=request.param == "local-command-agent")


async def collect(records: AsyncIterator[Record], timeout: float = 30) -> list[Record]:
    async with asyncio.timeout(timeout):
        return [record async for record in records]


async def test_records_in_order_and_resumable(kit: Kit) -> None:
    command, spec = kit.agent(0)
    run = models.Run(spec=spec)
    handle, info = await kit.backend.launch(run, LaunchSpec.of(run.id, command, kit.credentials))
    records = await collect(handle.records(after=0))
    cursors = [r.cursor for r in records]
    assert cursors == sorted(set(cursors))
    assert records[-1].kind == "exit" and records[-1].exit is not None
    assert records[-1].exit.exit_code == 0
    kit.check([r.data for r in records if r.kind == "stdout"])
    await handle.finalize()
    # a restarted control plane resumes from a middle cursor and gets exactly the rest
    middle = records[len(records) // 2].cursor
    again, again_info = await kit.restarted().attach(run)
    # a reattach tells the supervisor what the launch did: same branch, same workspace
    assert (again_info.branch, again_info.workspace) == (info.branch, info.workspace)
    rest = await collect(again.records(after=middle))
    assert [(r.cursor, r.kind, r.data) for r in rest] == [
        (r.cursor, r.kind, r.data) for r in records if r.cursor > middle
    ]
    await kit.backend.cleanup(run)


async def test_stop_ends_the_run_as_stopped(kit: Kit) -> None:
    command, spec = kit.agent(600)
    run = models.Run(spec=spec)
    handle, _info = await kit.backend.launch(run, LaunchSpec.of(run.id, command, kit.credentials))
    seen = 0
    async with asyncio.timeout(30):
        async for record in handle.records(after=0):
            if record.kind == "stdout":
                seen += 1
            if seen == kit.busy_after:
                break
    await handle.stop(1.0)
    records = await collect(handle.records(after=0), timeout=15)
    assert records[-1].kind == "exit" and records[-1].exit is not None
    assert records[-1].exit.stopped
    await kit.backend.cleanup(run)
