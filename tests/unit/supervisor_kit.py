"""Helpers for the supervisor's unit tests on the fake backend (the fixtures are in
``conftest.py``): a busy agent's script, a spec, and waits for a run's status."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agentfarm.backends import fake
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import Step
from agentfarm.domain import launch, models
from agentfarm.store import Store

#: Hang guard only: every wait ends on an event long before this.
GUARD = 20


def slow_script(run: models.Run, command: launch.AgentCommand) -> list[Step]:
    """Starts, then stays busy for ten minutes unless stopped."""
    steps = fake.claude_like_script(run, command)[:2]
    return [*steps, Step("exit", exit=ExitInfo(exit_code=0), delay=600)]


def spec(repo: str = "/srv/repo", **fields: object) -> models.AgentSpec:
    return models.AgentSpec.model_validate({"repo": repo, "prompt": "fix it", **fields})


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(GUARD):
        while not await check():
            await asyncio.sleep(0.01)


async def ended(store: Store, run_id: str) -> models.Run:
    async def done() -> bool:
        return (await store.get_run(run_id)).status.terminal

    await until(done)
    return await store.get_run(run_id)


async def has_status(store: Store, run_id: str, status: models.RunStatus) -> None:
    async def check() -> bool:
        return (await store.get_run(run_id)).status is status

    await until(check)
