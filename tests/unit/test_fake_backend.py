"""The fake backend behaves like a real one across a control-plane restart: a new object that
finds the agents still running."""

from __future__ import annotations

import asyncio

from agentfarm.backends import fake
from agentfarm.backends.base import ExitInfo, Record
from agentfarm.domain import launch, models


def slow(run: models.Run, command: launch.AgentCommand) -> list[fake.Step]:
    steps = fake.claude_like_script(run, command)[:2]
    return [*steps, fake.Step("exit", exit=ExitInfo(exit_code=0), delay=600)]


async def test_restarted_is_a_fresh_object_over_the_same_agents() -> None:
    backend = fake.FakeBackend(slow)
    run = models.Run(spec=models.AgentSpec(repo="/r", prompt="p"))
    command = launch.AgentCommand(argv=["claude"], env={})
    spec = launch.LaunchSpec.of(run.id, command, {"ANTHROPIC_API_KEY": "k"})
    try:
        handle, info = await backend.launch(run, spec)
        assert info.branch == spec.branch == f"agentfarm/{run.id}"
        again = backend.restarted()
        assert again is not backend and again.world is backend.world
        reattached, again_info = await again.attach(run)
        assert reattached is not handle
        assert (again_info.branch, again_info.workspace) == (info.branch, info.workspace)
        seen: list[Record] = []
        async with asyncio.timeout(5):
            async for record in reattached.records(after=0):
                seen.append(record)
                if len(seen) == 2:
                    break
        assert [r.kind for r in seen] == ["started", "stdout"]
        # What the run was given is seen the same from either object.
        assert again.world.launches[run.id] is spec
        assert again.secrets[run.id] == backend.secrets[run.id] == {"ANTHROPIC_API_KEY": "k"}
        assert again.commands[run.id] == command
        # Settings made on the restarted object reach the shared world.
        again.fail_launch = "no"
        assert backend.fail_launch == "no"
        await reattached.stop(1.0)
        assert backend.runs[run.id].stop_requested
    finally:
        await backend.shutdown()
