"""The supervisor's run lifecycle on the fake backend: launch, stop and reattach races."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.backends import fake
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import make_settings

#: Hang guard only: every wait below ends on an event long before this.
GUARD = 20


def slow_script(run: models.Run, command: AgentCommand) -> list[Step]:
    """Starts, then stays busy for ten minutes unless stopped."""
    steps = fake.claude_like_script(run, command)[:2]
    return [*steps, Step("exit", exit=ExitInfo(exit_code=0), delay=600)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "data" / "agentfarm.db")
    yield store
    await store.close()


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    backend = FakeBackend(slow_script)
    yield backend
    await backend.shutdown()


@pytest.fixture
async def supervisors(
    tmp_path: Path, store: Store, backend: FakeBackend
) -> AsyncIterator[Callable[..., Supervisor]]:
    made: list[Supervisor] = []

    def make(on: FakeBackend | None = None) -> Supervisor:
        """A supervisor on ``backend``, or ``on`` (a restarted object over the same agents)."""
        settings = make_settings(tmp_path / "data")
        secrets = SecretStore(settings.secrets_path)
        backends = {"local": on or backend}
        sup = Supervisor(settings, store, secrets, backends, {"claude": ClaudeAdapter()})
        made.append(sup)
        return sup

    yield make
    for sup in made:
        await sup.close()


def spec() -> models.AgentSpec:
    return models.AgentSpec(repo="/srv/repo", prompt="fix it")


async def statuses(store: Store, run_id: str) -> list[str]:
    events = await store.list_events(run_id)
    return [e.data["status"] for e in events if e.type == models.EventType.run_status]


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(GUARD):
        while not await check():
            await asyncio.sleep(0.01)


async def ended(store: Store, run_id: str) -> models.Run:
    async def done() -> bool:
        return (await store.get_run(run_id)).status.terminal

    await until(done)
    return await store.get_run(run_id)


async def test_a_run_stopped_while_the_dispatcher_looks_is_never_launched(
    store: Store,
    backend: FakeBackend,
    supervisors: Callable[..., Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    # The dispatcher reads the queued run, then waits here while the stop lands.
    real = store.active_runs
    looked, gate = asyncio.Event(), asyncio.Event()

    async def gated() -> list[models.Run]:
        runs = await real()
        looked.set()
        await gate.wait()
        return runs

    monkeypatch.setattr(store, "active_runs", gated)
    async with asyncio.timeout(GUARD):
        await looked.wait()
    assert (await sup.stop_run(run.id)).status is models.RunStatus.stopped
    looked.clear()
    gate.set()
    async with asyncio.timeout(GUARD):
        await looked.wait()  # the dispatcher came round again: the launch attempt is over
    assert await statuses(store, run.id) == ["queued", "stopped"]
    assert (await store.get_run(run.id)).status is models.RunStatus.stopped
    assert run.id not in backend.runs


async def test_a_stop_between_starting_and_launch_launches_nothing(
    store: Store,
    backend: FakeBackend,
    supervisors: Callable[..., Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = supervisors()
    run = await sup.submit(spec())
    asked = asyncio.Event()
    # Hold the launch right after `starting` is recorded, and stop the run there.
    real_append = sup._append
    gate = asyncio.Event()

    async def append(run_id: str, drafts: list[models.EventDraft], **kw: Any) -> None:
        await real_append(run_id, drafts, **kw)
        if (kw.get("run_fields") or {}).get("status") == models.RunStatus.starting:
            asked.set()
            await gate.wait()

    monkeypatch.setattr(sup, "_append", append)
    await sup.start()
    async with asyncio.timeout(GUARD):
        await asked.wait()
    await sup.stop_run(run.id)
    gate.set()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    assert await statuses(store, run.id) == ["queued", "starting", "stopped"]
    assert run.id not in backend.runs


async def test_reattach_records_running_start_time_and_workspace(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    # The server died after the backend launched the agent, before it recorded `running`.
    run = models.Run(spec=spec(), status=models.RunStatus.starting, branch="agentfarm/x")
    await store.create_run(run)
    await backend.launch(run, LaunchSpec.of(run.id, AgentCommand(argv=["claude"], env={}), {}))
    sup = supervisors(backend.restarted())
    await sup.start()

    async def running() -> bool:
        return (await store.get_run(run.id)).status is models.RunStatus.running

    await until(running)
    got = await store.get_run(run.id)
    assert got.started_at is not None
    assert got.workspace == f"/fake/{run.id}"
    assert got.branch == f"agentfarm/{run.id}"
    assert await statuses(store, run.id) == ["running"]
    await sup.stop_run(run.id)
    assert (await ended(store, run.id)).status is models.RunStatus.stopped


async def test_a_stop_during_reattach_is_honoured(
    store: Store,
    backend: FakeBackend,
    supervisors: Callable[..., Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = supervisors()
    run = await first.submit(spec())
    await first.start()

    async def running() -> bool:
        return (await store.get_run(run.id)).status is models.RunStatus.running

    await until(running)
    await first.close()  # the control plane goes away; the agent keeps working

    restarted = backend.restarted()
    real_attach = restarted.attach
    attaching, gate = asyncio.Event(), asyncio.Event()

    async def attach(r: models.Run) -> Any:
        attaching.set()
        await gate.wait()
        return await real_attach(r)

    monkeypatch.setattr(restarted, "attach", attach)
    second = supervisors(restarted)
    await second.start()
    async with asyncio.timeout(GUARD):
        await attaching.wait()
    await second.stop_run(run.id)  # while the new server is still reattaching
    gate.set()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    assert backend.runs[run.id].stop_requested


async def test_a_stop_that_loses_the_race_to_the_dispatcher_still_stops_the_run(
    store: Store,
    backend: FakeBackend,
    supervisors: Callable[..., Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = supervisors()
    real_finish = sup._finish_without_agent
    entered, gate = asyncio.Event(), asyncio.Event()
    calls = 0

    async def finish(run: models.Run, status: models.RunStatus, error: str | None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the stop's own attempt waits while the dispatcher takes the run
            entered.set()
            await gate.wait()
        return await real_finish(run, status, error)

    monkeypatch.setattr(sup, "_finish_without_agent", finish)
    run = await sup.submit(spec())
    stopping = asyncio.create_task(sup.stop_run(run.id))
    async with asyncio.timeout(GUARD):
        await entered.wait()
    await sup.start()
    assert (await ended(store, run.id)).status is models.RunStatus.stopped
    gate.set()
    async with asyncio.timeout(GUARD):
        assert (await stopping).status is models.RunStatus.stopped
    assert await statuses(store, run.id) == ["queued", "starting", "stopped"]
    assert run.id not in backend.runs


async def test_the_launch_spec_is_built_once_and_follow_ups_use_its_command(
    tmp_path: Path, store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()

    async def running() -> bool:
        return (await store.get_run(run.id)).status is models.RunStatus.running

    await until(running)
    sent = backend.world.launches[run.id]
    assert (sent.run_id, sent.branch) == (run.id, run.branch)
    # The adapter names the binary; the backend resolves it.
    assert sent.command.argv[0] == "claude"
    assert sent.command.interrupt and sent.command.followup is not None
    key = make_settings(tmp_path).anthropic_api_key
    assert key is not None
    assert dict(sent.credentials) == {"ANTHROPIC_API_KEY": key.get_secret_value()}
    await sup.send(run.id, "and the tests")
    assert backend.runs[run.id].stdin == [sent.command.followup.encode("and the tests")]
    await sup.stop_run(run.id)
    assert (await ended(store, run.id)).status is models.RunStatus.stopped
