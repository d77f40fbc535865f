"""Follow-ups and interrupts through the supervisor on the fake backend: what reaches the
agent, what is recorded, and the 409s with their reasons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agentfarm.agents.base import AgentAdapter
from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.agents.codex import CodexAdapter
from agentfarm.agents.command import CommandAdapter
from agentfarm.backends import base as backend_base
from agentfarm.backends import fake
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, FakeHandle, Step
from agentfarm.domain import errors, launch, models
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import events, watchdog
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import make_settings
from tests.unit.supervisor_kit import ended, has_status, slow_script


@pytest.fixture
def backend_script() -> fake.Script:
    return slow_script


@pytest.fixture
def adapters() -> dict[str, AgentAdapter]:
    return {"claude": ClaudeAdapter(), "codex": CodexAdapter(), "command": CommandAdapter()}


@pytest.fixture
def sup(
    supervisors: Callable[..., Supervisor], backend: FakeBackend
) -> tuple[Supervisor, FakeBackend]:
    return supervisors(openai_api_key="sk-openai-test"), backend


async def running(sup: Supervisor, store: Store, **fields: object) -> models.Run:
    spec = models.AgentSpec.model_validate({"repo": "/srv/repo", "prompt": "fix it", **fields})
    run = await sup.submit(spec)
    await sup.start()
    await has_status(store, run.id, models.RunStatus.running)
    return run


async def test_an_interrupt_reaches_the_agent_and_is_recorded(
    store: Store, sup: tuple[Supervisor, FakeBackend]
) -> None:
    supervisor, backend = sup
    run = await running(supervisor, store)
    await supervisor.interrupt(run.id)
    assert backend.runs[run.id].interrupts == 1
    kinds = [e.type for e in await store.list_events(run.id)]
    assert models.EventType.user_interrupt in kinds
    assert (await store.get_run(run.id)).status is models.RunStatus.running  # not ended
    await supervisor.stop_run(run.id)
    done = await ended(store, run.id)
    with pytest.raises(errors.ConflictError, match=r"has ended \(stopped\).*agentfarm resume"):
        await supervisor.interrupt(run.id)
    with pytest.raises(errors.ConflictError, match="has ended"):
        await supervisor.send(done.id, "too late")


async def test_a_command_agent_takes_no_messages_and_no_interrupts(
    store: Store, sup: tuple[Supervisor, FakeBackend]
) -> None:
    supervisor, backend = sup
    run = await running(supervisor, store, agent="command", command={"argv": ["make"]})
    with pytest.raises(errors.ConflictError, match="takes no follow-up messages"):
        await supervisor.send(run.id, "hello")
    with pytest.raises(errors.ConflictError, match=r"cannot be interrupted.*agentfarm stop"):
        await supervisor.interrupt(run.id)
    assert backend.runs[run.id].stdin == [] and backend.runs[run.id].interrupts == 0
    await supervisor.stop_run(run.id)
    await ended(store, run.id)


async def test_codex_takes_messages_but_no_interrupt(
    store: Store, sup: tuple[Supervisor, FakeBackend]
) -> None:
    supervisor, backend = sup
    run = await running(supervisor, store, agent="codex", followup_window_seconds=60)
    sent = backend.world.launches[run.id].command
    assert sent.followup_window == 60.0
    await supervisor.send(run.id, "and the docs")
    assert sent.followup is not None
    assert backend.runs[run.id].stdin == [sent.followup.encode("and the docs")]
    with pytest.raises(errors.ConflictError, match="cannot be interrupted"):
        await supervisor.interrupt(run.id)
    await supervisor.stop_run(run.id)
    await ended(store, run.id)


async def test_what_the_backend_refuses_is_a_conflict_with_its_reason(
    store: Store, sup: tuple[Supervisor, FakeBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor, _ = sup
    run = await running(supervisor, store)

    async def refuse(*_args: object) -> None:
        raise errors.BackendError("no turn is running: the agent is waiting for a message")

    monkeypatch.setattr(FakeHandle, "interrupt", refuse)
    monkeypatch.setattr(FakeHandle, "send", refuse)
    with pytest.raises(errors.ConflictError, match=r"nothing was interrupted: no turn is running"):
        await supervisor.interrupt(run.id)
    with pytest.raises(errors.ConflictError, match="the message was not delivered"):
        await supervisor.send(run.id, "hello")
    kinds = [e.type for e in await store.list_events(run.id)]
    assert models.EventType.user_interrupt not in kinds
    assert models.EventType.user_message not in kinds
    await supervisor.stop_run(run.id)
    await ended(store, run.id)


def test_a_waiting_notice_becomes_a_waiting_event() -> None:
    from agentfarm.backends.base import Record
    from agentfarm.domain import launch
    from agentfarm.domain.redact import Redactor

    parser = ClaudeAdapter().new_parser()
    record = Record(3, "notice", launch.waiting_notice(45).encode())
    (draft,) = events.translate(parser, record, Redactor())
    assert (draft.type, draft.data) == (models.EventType.run_waiting, {"seconds": 45.0})
    plain = Record(4, "notice", b"agentfarm.waiting not json")
    (draft,) = events.translate(parser, plain, Redactor())
    assert draft.type == models.EventType.run_notice


async def test_the_watchdog_lets_an_agent_wait_through_its_follow_up_window(
    tmp_path: Path, store: Store
) -> None:
    def waits(run: models.Run, command: launch.AgentCommand) -> list[Step]:
        steps = fake.claude_like_script(run, command)
        # The result, the window (long), then the agent exits after a while of silence that
        # is far beyond the watchdog's 0.05 s after a result.
        notice = Step("notice", launch.waiting_notice(30).encode())
        return [*steps[:-1], notice, Step("exit", exit=ExitInfo(exit_code=0), delay=0.3)]

    backend = FakeBackend(waits)
    settings = make_settings(tmp_path / "data", result_grace_seconds=0.05, model_stall_seconds=0.05)
    supervisor = Supervisor(
        settings, store, SecretStore(settings.secrets_path), {"local": backend},
        {"claude": ClaudeAdapter()},
    )  # fmt: skip
    try:
        run = await supervisor.submit(models.AgentSpec(repo="/srv/repo", prompt="go"))
        await supervisor.start()
        done = await ended(store, run.id)
        assert done.status is models.RunStatus.succeeded, done.error
        stored = await store.list_events(run.id)
        assert models.EventType.run_waiting in [e.type for e in stored]
        notices = [e.data["message"] for e in stored if e.type == models.EventType.run_notice]
        assert not [n for n in notices if "had not exited" in n], notices
        assert not backend.runs[run.id].stop_requested
    finally:
        await supervisor.close()
        await backend.shutdown()


def test_the_watchdogs_phase_while_waiting_for_a_follow_up() -> None:
    tracker = watchdog.Tracker()
    limits = watchdog.Limits(model=60, tool=600, result=5, stall_resumes=1)
    result = models.EventDraft(type=models.EventType.agent_result, data={})
    tracker.feed([result])
    assert tracker.phase is watchdog.Phase.result and tracker.quiet(limits) == 5
    tracker.feed([events.waiting_event(300), events.notice_event("a notice")])
    assert tracker.phase is watchdog.Phase.waiting
    assert tracker.quiet(limits) == 300 + watchdog.WAITING_GRACE
    tracker.feed([models.EventDraft(type=models.EventType.agent_text, data={"text": "hi"})])
    assert tracker.phase is watchdog.Phase.model and tracker.quiet(limits) == 60


async def test_an_ended_run_is_continued_with_a_new_prompt_in_its_session(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = fake.claude_like_script  # a short conversation that succeeds
    supervisor = supervisors()
    run = await supervisor.submit(models.AgentSpec(repo="/srv/repo", prompt="go"))
    await supervisor.start()
    first = await ended(store, run.id)
    assert first.status is models.RunStatus.succeeded and first.session_id
    with pytest.raises(errors.ConflictError, match="agentfarm resume"):
        await supervisor.send(run.id, "not like this")  # ended: 409, resume instead
    continued = await supervisor.resume_run(run.id, "and now the docs")
    assert continued.status is models.RunStatus.starting and continued.finished_at is None
    assert continued.continuation.base_cost_usd == first.cost_usd
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.succeeded
    command = backend.world.launches[run.id].command
    assert command.argv[-2:] == ["--resume", first.session_id]
    assert b"and now the docs" in command.stdin
    stored = await store.list_events(run.id)
    statuses = [e.data["status"] for e in stored if e.type == models.EventType.run_status]
    assert statuses == ["queued", "starting", "running", "succeeded",
                        "starting", "running", "succeeded"]  # fmt: skip
    said = [e.data["text"] for e in stored if e.type == models.EventType.user_message]
    assert said == ["and now the docs"]
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    # Cost counts both processes.
    assert done.cost_usd is not None and first.cost_usd is not None
    assert done.cost_usd > first.cost_usd


async def test_what_cannot_be_continued_says_why(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = fake.claude_like_script
    supervisor = supervisors()
    cmd = await supervisor.submit(
        models.AgentSpec(repo="/srv/repo", prompt="go", agent="command", command={"argv": ["make"]})
    )
    await supervisor.start()
    await ended(store, cmd.id)
    with pytest.raises(errors.ConflictError, match="cannot start a new process"):
        await supervisor.resume_run(cmd.id, "again")
    piped = await supervisor.submit(models.AgentSpec(repo="/srv/repo", prompt="go"))
    await ended(store, piped.id)
    await store.update_run(piped.id, origin="pipeline")
    with pytest.raises(errors.ConflictError, match="pipeline run"):
        await supervisor.resume_run(piped.id, "again")


class ElsewhereBackend(FakeBackend):
    """A backend whose ended runs go on somewhere new (as Kubernetes' do, in a new pod):
    ``ContinuesEnded``, with a refusal a test sets."""

    def __init__(self, world: fake.FakeWorld) -> None:
        super().__init__(world=world)
        self.refusal: str | None = "its agent's session was not kept; launch a new run instead"
        self.continued: list[str] = []

    async def continue_refusal(self, run: models.Run) -> str | None:
        return self.refusal

    async def continue_ended(
        self, run: models.Run, spec: launch.LaunchSpec
    ) -> tuple[FakeHandle, backend_base.LaunchInfo]:
        self.continued.append(run.id)
        return await self.resume(run, spec)


async def test_a_backend_that_continues_elsewhere_is_asked_and_says_why_not(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = fake.claude_like_script
    elsewhere = ElsewhereBackend(world=backend.world)
    assert isinstance(elsewhere, backend_base.ContinuesEnded)
    supervisor = supervisors(on=elsewhere)
    run = await supervisor.submit(models.AgentSpec(repo="/srv/repo", prompt="go"))
    await supervisor.start()
    first = await ended(store, run.id)
    with pytest.raises(errors.ConflictError) as refused:
        await supervisor.resume_run(run.id, "and now the docs")
    assert str(refused.value) == (
        f"run {run.id} cannot be continued: its agent's session was not kept; launch a new run "
        "instead"
    )
    assert (await store.get_run(run.id)).status is models.RunStatus.succeeded  # untouched
    elsewhere.refusal = None
    await supervisor.resume_run(run.id, "and now the docs")
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.succeeded and elsewhere.continued == [run.id]
    command = backend.world.launches[run.id].command
    assert command.argv[-2:] == ["--resume", first.session_id]
