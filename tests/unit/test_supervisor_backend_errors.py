"""A run whose backend says why it ended (ExitInfo.error without being lost: a pod whose clone
failed, an image that cannot start, an eviction) fails with the backend's reason, not with
the agent's missing result."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import make_settings
from tests.unit.supervisor_kit import GUARD

WHY = "cloning the repository failed: git clone: fatal: repository not found"


def clone_failed(_run: models.Run, _command: AgentCommand) -> list[Step]:
    return [Step("exit", exit=ExitInfo(exit_code=None, error=WHY))]


async def test_the_backends_reason_is_the_runs_error(store: Store, tmp_path: Path) -> None:
    backend = FakeBackend(clone_failed)
    settings = make_settings(tmp_path / "data")
    sup = Supervisor(
        settings, store, SecretStore(settings.secrets_path), {"local": backend},
        {"claude": ClaudeAdapter()},
    )  # fmt: skip
    try:
        run = await sup.submit(models.AgentSpec(repo="/srv/repo", prompt="fix it"))
        await sup.start()
        async with asyncio.timeout(GUARD):
            while not (done := await store.get_run(run.id)).status.terminal:
                await asyncio.sleep(0.01)
    finally:
        await sup.close()
        await backend.shutdown()
    assert done.status is models.RunStatus.failed
    assert done.error == WHY
    events = await store.list_events(run.id)
    assert events[-1].data == {"status": "failed", "error": WHY}
