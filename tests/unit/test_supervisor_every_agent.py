"""Budgets and the watchdog hold for every agent, on the fake backend with each agent's real
adapter and parser: Codex's ``max_turns`` from its stream (recorded lines), a stalled Codex
command or model stream, a quiet command agent (one threshold, ``tool_quiet_seconds``), and a
dollar or turn budget on the command agent refused at submit (it reports neither)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agentfarm.agents.base import AgentAdapter
from agentfarm.agents.codex import CodexAdapter
from agentfarm.agents.command import CommandAdapter
from agentfarm.backends import fake
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import errors, launch, models
from agentfarm.store import Store
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import AppFactory
from tests.unit.supervisor_kit import GUARD, ended
from tests.unit.test_supervisor_codex import RECORDED

LINES = RECORDED.read_bytes().splitlines()


def hangs() -> Step:
    """An agent process that never ends by itself (stopped by agentfarm, or the guard)."""
    return Step("exit", exit=ExitInfo(exit_code=0), delay=600)


@pytest.fixture
def backend_script() -> fake.Script:
    return lambda run, command: [hangs()]


@pytest.fixture
def adapters() -> dict[str, AgentAdapter]:
    return {"codex": CodexAdapter(), "command": CommandAdapter()}


@pytest.fixture
def supervisor_settings() -> dict[str, object]:
    return {"codex_api_key": "sk-codex-0123456", "stall_resumes": 0}


def codex(**fields: object) -> models.AgentSpec:
    return models.AgentSpec.model_validate(
        {"repo": "/srv/repo", "prompt": "add hello", "agent": "codex", **fields}
    )


def command(**fields: object) -> models.AgentSpec:
    return models.AgentSpec.model_validate(
        {"repo": "/srv/repo", "prompt": "go", "agent": "command",
         "command": {"argv": ["sh", "-c", "cat"]}, **fields}
    )  # fmt: skip


def replay(upto: int) -> Callable[[models.Run, launch.AgentCommand], list[Step]]:
    """The recorded Codex run's first ``upto`` lines, then a process that does not end."""

    def script(run: models.Run, cmd: launch.AgentCommand) -> list[Step]:
        return [*(Step("stdout", line) for line in LINES[:upto]), hangs()]

    return script


async def test_codex_s_max_turns_holds_from_its_stream(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    # The recorded run takes three model turns before its turn ends; two are allowed.
    backend.script = replay(len(LINES) - 1)
    sup = supervisors()
    await sup.start()
    run = await ended(store, (await sup.submit(codex(max_turns=2))).id)
    assert run.status is models.RunStatus.stopped
    assert run.error == "turns: 2 of 2"


async def test_a_codex_command_that_hangs_is_a_stall_of_the_tool_phase(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = replay(4)  # up to the first command's start
    sup = supervisors(tool_quiet_seconds=0.05, model_stall_seconds=600)
    await sup.start()
    run = await ended(store, (await sup.submit(codex())).id)
    assert run.status is models.RunStatus.failed
    assert run.error == "stalled: no output for 0 s while a tool ran; the agent was stopped"


async def test_a_codex_model_stream_that_stops_is_a_stall_of_the_model_phase(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = replay(5)  # the first command completed: the model's turn
    sup = supervisors(tool_quiet_seconds=600, model_stall_seconds=0.05)
    await sup.start()
    run = await ended(store, (await sup.submit(codex())).id)
    assert run.status is models.RunStatus.failed
    assert run.error == ("stalled: no output for 0 s waiting for the model; the agent was stopped")


async def test_a_quiet_command_agent_is_judged_by_the_tool_threshold_only(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = lambda run, cmd: [
        Step("stdout", b"building"), Step("stdout", b"built", delay=0.3),
        Step("exit", exit=ExitInfo(exit_code=0)),
    ]  # fmt: skip
    # Quiet far longer than a model may be: a command is a tool, so that is fine.
    patient = supervisors(model_stall_seconds=0.05, tool_quiet_seconds=GUARD)
    await patient.start()
    run = await ended(store, (await patient.submit(command())).id)
    assert run.status is models.RunStatus.succeeded, run.error
    await patient.close()

    backend.script = lambda run, cmd: [Step("stdout", b"building"), hangs()]
    strict = supervisors(model_stall_seconds=600, tool_quiet_seconds=0.05)
    await strict.start()
    run = await ended(store, (await strict.submit(command())).id)
    assert run.status is models.RunStatus.failed
    assert run.error == "stalled: no output for 0 s while a tool ran; the agent was stopped"


async def test_a_dollar_or_turn_budget_on_the_command_agent_is_refused(
    store: Store, supervisors: Callable[..., Supervisor], app_client: AppFactory
) -> None:
    sup = supervisors()
    with pytest.raises(errors.InvalidInputError, match="max_turns cannot hold"):
        await sup.submit(command(max_turns=3))
    assert await store.list_runs() == []
    async with app_client() as client:
        spec = command(max_budget_usd=1.0).model_dump(mode="json", exclude_none=True)
        response = await client.post("/api/runs", json={"spec": spec})
        # Like every invalid field of a spec (web/errors.py: invalid_input is a 422).
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_input"
        message = response.json()["error"]["message"]
        assert "reports no cost and no turns, so max_budget_usd cannot hold" in message
        assert "use max_minutes" in message
