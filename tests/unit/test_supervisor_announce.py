"""What the supervisor tells the notification targets beyond a run's end: a park at the usage
limit (with its reset time), a resume (by itself or by a person), a day or month budget
reached (once, however many runs it holds), a run stopped by its own budget; and that a parked
run gives its slot to a queued one. Fake backend, the real Claude adapter and parser."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentfarm.agents.base import AgentAdapter
from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.agents.command import CommandAdapter
from agentfarm.backends import fake
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import notify
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import make_settings
from tests.unit.supervisor_kit import spec
from tests.unit.test_supervisor_budgets import spent_run
from tests.unit.test_supervisor_parking import (
    ended,
    finishes,
    limited,
    reaches,
    resumed,
    text,
    until,
)


class Recording(notify.Notifier):
    """Keeps what would be sent (every kind, wanted or not); sends nothing."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, SecretStore(settings.secrets_path))
        self.sent: list[notify.Notification] = []

    async def notify(self, note: notify.Notification) -> None:
        self.sent.append(note)

    def kinds(self, run_id: str | None = None) -> list[str]:
        return [n.kind.value for n in self.sent if run_id is None or n.run_id == run_id]


@pytest.fixture
def backend_script() -> fake.Script:
    return lambda run, command: finishes()


@pytest.fixture
def adapters() -> dict[str, AgentAdapter]:
    return {"claude": ClaudeAdapter(), "command": CommandAdapter()}


@pytest.fixture
def supervisor_settings() -> dict[str, object]:
    return {"park_margin_seconds": 0}


@pytest.fixture
def notifier() -> Callable[[Settings], notify.Notifier]:
    return Recording


def recorded(sup: Supervisor) -> Recording:
    assert isinstance(sup.notifier, Recording)
    return sup.notifier


#: The kinds that tell a run's end.
ENDS = {notify.Kind.run_finished, notify.Kind.run_failed, notify.Kind.run_stopped}


async def told_ended(store: Store, sup: Supervisor, run_id: str) -> models.Run:
    """The run as it ended, once its end is told too: the store holds the end before the
    supervisor tells it, so a test that reads what was sent waits for both."""
    done = await ended(store, run_id)

    async def told() -> bool:
        return any(n.kind in ENDS and n.run_id == run_id for n in recorded(sup).sent)

    await until(told)
    return done


async def test_a_park_and_the_resume_by_itself_are_told_with_the_reset_time(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    reset = time.time() + 2
    backend.script = lambda run, command: finishes() if resumed(command) else limited(reset)
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    parked = await reaches(store, run.id, models.RunStatus.parked)
    done = await told_ended(store, sup, run.id)
    assert done.status is models.RunStatus.succeeded
    told = recorded(sup)
    assert told.kinds(run.id) == ["run_parked", "run_resumed", "run_finished"]
    park, resume, _ = told.sent
    assert parked.parked_until is not None
    assert f"{parked.parked_until:%Y-%m-%d %H:%M} UTC" in park.body
    assert "usage limit" in park.body and park.title == f"agentfarm: run {run.id} parked"
    assert resume.body.startswith("resumed by itself after the usage limit reset")


async def test_a_resume_by_a_person_is_told_as_such(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    reset = time.time() + 3600
    backend.script = lambda run, command: finishes() if resumed(command) else limited(reset)
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    await reaches(store, run.id, models.RunStatus.parked)
    await sup.resume_run(run.id)
    await told_ended(store, sup, run.id)
    told = recorded(sup)
    assert told.kinds(run.id) == ["run_parked", "run_resumed", "run_finished"]
    assert told.sent[1].body.startswith("resumed by a person")


async def test_a_stall_s_resume_is_no_park_to_tell(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = lambda run, command: [text("thinking"), Step(
        "exit", exit=ExitInfo(exit_code=0), delay=600)]  # fmt: skip
    sup = supervisors(model_stall_seconds=0.05, stall_resumes=1)
    run = await sup.submit(spec())
    await sup.start()
    done = await told_ended(store, sup, run.id)
    assert done.continuation.stall_resumes == 1
    assert recorded(sup).kinds(run.id) == ["run_failed"]


async def test_a_reached_day_budget_is_told_once_however_many_runs_it_holds(
    store: Store, supervisors: Callable[..., Supervisor]
) -> None:
    config = await store.create_config(
        models.AgentConfig(
            name="pricey", repo="/srv/repo", prompt="p", daily_budget_usd=1.0,
            notify_secrets=["NOTIFY_TEAM"],
        )
    )  # fmt: skip
    await spent_run(store, 1.5, config=config)
    sup = supervisors(daily_budget_usd=100.0)
    held = [await sup.submit(config.spec(), config=config) for _ in range(3)]
    for _ in range(3):  # the queue and the periodic check look again and again
        await sup.fleet.plan(set())
        await sup.fleet.check_budgets()
    told = recorded(sup)
    assert told.kinds() == ["budget_reached"]
    (note,) = told.sent
    assert note.body.startswith("budget: config pricey daily $1.50 spent of $1.00; it resets at ")
    assert "new runs wait in the queue until then; running ones finish" in note.body
    assert note.secrets == ("NOTIFY_TEAM",) and note.config_name == "pricey"
    # The farm's own budget is another budget: told once as well.
    await spent_run(store, 200.0)
    await sup.fleet.check_budgets()
    await sup.fleet.check_budgets()
    assert told.kinds() == ["budget_reached", "budget_reached"]
    assert told.sent[1].body.startswith("budget: farm daily $201.50 spent of $100.00")
    # A restarted server remembers what it told.
    again = supervisors(daily_budget_usd=100.0)
    await again.fleet.check_budgets()
    await again.fleet.plan(set())
    assert recorded(again).sent == []
    for run in held:
        assert (await store.get_run(run.id)).status is models.RunStatus.queued
        await sup.stop_run(run.id)


async def test_a_run_stopped_by_its_own_budget_is_told_naming_the_budget(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = lambda run, command: [
        text("one", "m1"), text("two", "m2"), text("three", "m3"),
        Step("exit", exit=ExitInfo(exit_code=0), delay=600),
    ]  # fmt: skip
    sup = supervisors()
    run = await sup.submit(spec(max_turns=2))
    await sup.start()
    done = await told_ended(store, sup, run.id)
    assert done.status is models.RunStatus.stopped
    # Told as a stop (if wanted) and as a budget reached (sent by default): both name it.
    note, budget = recorded(sup).sent
    assert note.kind is notify.Kind.run_stopped
    assert note.title == f"agentfarm: run {run.id} stopped by a budget"
    assert "stopped by a budget: turns: 2 of 2" in note.body
    assert budget.kind is notify.Kind.budget_reached and budget.run_id == run.id
    assert budget.title == f"agentfarm: run {run.id} stopped by its budget"
    assert budget.body == "turns: 2 of 2: one-off run, agent claude was stopped"
    assert sup.notifier.wants(budget.kind) and not sup.notifier.wants(note.kind)


async def test_a_parked_run_takes_no_cap_slot(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    def script(run: models.Run, command: AgentCommand) -> list[Step]:
        if run.spec.agent == "command":
            return [Step("stdout", b"done"), Step("exit", exit=ExitInfo(exit_code=0))]
        return limited(time.time() + 3600)

    sup = supervisors(max_concurrent_runs=1)
    backend.script = script
    await sup.start()
    parked = await sup.submit(spec())
    await reaches(store, parked.id, models.RunStatus.parked)
    # Another agent (no shared usage limit), so only the cap could hold it: it does not.
    other = await sup.submit(spec(agent="command", command={"argv": ["sh", "-c", "echo"]}))
    done = await ended(store, other.id)
    assert done.status is models.RunStatus.succeeded
    assert (await store.get_run(parked.id)).status is models.RunStatus.parked
    await sup.stop_run(parked.id)
    await ended(store, parked.id)


def test_a_run_stopped_by_a_day_budget_is_not_a_budget_of_its_own(tmp_path: Path) -> None:
    # The day's budget was told once already; its stopped runs each say it, as stops.
    settings = make_settings(tmp_path / "data")
    run = models.Run(
        spec=spec(), status=models.RunStatus.stopped,
        error="budget: farm daily $2.00 spent of $1.00; it resets at 2026-12-01 00:00 UTC",
    )  # fmt: skip
    assert notify.for_own_budget(settings, run) is None
    note = notify.for_run(settings, run)
    assert note is not None and note.title.endswith("stopped by a budget")
    assert notify.for_own_budget(settings, run.model_copy(update={"error": "time: 5 min"}))
    stopped_by_person = run.model_copy(update={"error": None})
    assert notify.for_own_budget(settings, stopped_by_person) is None
