"""One conformance suite for every backend: the fake one in the package and the local one with
real bubblewrap. (The Kubernetes backend has its own tier in tests/k8s/.)"""

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

from agentfarm.agents import command
from agentfarm.backends.base import Backend, Record
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests.realparts import missing

LINES = [json.dumps({"type": "line", "n": i}).encode() for i in range(20)]


@dataclass
class Kit:
    backend: Backend
    #: A fresh backend object as after a control-plane restart.
    restarted: Callable[[], Backend]
    #: (command, spec) for an agent printing LINES, then sleeping ``sleep`` seconds.
    agent: Callable[[float], tuple[AgentCommand, models.AgentSpec]]


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
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    from agentfarm.backends.local import LocalBackend

    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["-c", "user.name=t", "-c", "user.email=t@e",
                 "commit", "-q", "--allow-empty", "-m", "init"]):  # fmt: skip
        subprocess.run(["git", "-C", str(repo), *args], check=True)
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

    return Kit(LocalBackend(settings), lambda: LocalBackend(settings), agent)


@pytest.fixture(params=["fake", "local", "local-command-agent"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    if request.param == "fake":
        return fake_kit(tmp_path)
    return local_kit(tmp_path, command_agent=request.param == "local-command-agent")


async def collect(records: AsyncIterator[Record], timeout: float = 30) -> list[Record]:
    async with asyncio.timeout(timeout):
        return [record async for record in records]


async def test_records_in_order_and_resumable(kit: Kit) -> None:
    command, spec = kit.agent(0)
    run = models.Run(spec=spec)
    handle, info = await kit.backend.launch(run, LaunchSpec.of(run.id, command, {}))
    records = await collect(handle.records(after=0))
    cursors = [r.cursor for r in records]
    assert cursors == sorted(set(cursors))
    assert records[-1].kind == "exit" and records[-1].exit is not None
    assert records[-1].exit.exit_code == 0
    assert [r.data for r in records if r.kind == "stdout"] == LINES
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
    handle, _info = await kit.backend.launch(run, LaunchSpec.of(run.id, command, {}))
    seen = 0
    async with asyncio.timeout(30):
        async for record in handle.records(after=0):
            if record.kind == "stdout":
                seen += 1
            if seen == len(LINES):
                break
    await handle.stop(1.0)
    records = await collect(handle.records(after=0), timeout=15)
    assert records[-1].kind == "exit" and records[-1].exit is not None
    assert records[-1].exit.stopped
    await kit.backend.cleanup(run)
