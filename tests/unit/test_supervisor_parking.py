"""Usage-limit parking, continued runs and the watchdog's phases, on the fake backend with the
real Claude adapter and parser (scripted stream-json lines)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import errors, models
from agentfarm.domain.launch import AgentCommand
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import make_settings

#: Hang guard only: every wait below ends on an event long before this.
GUARD = 20
SESSION = "sess-parking"


def line(obj: dict[str, Any]) -> Step:
    return Step("stdout", json.dumps({**obj, "session_id": SESSION}).encode())


def init() -> Step:
    return line({"type": "system", "subtype": "init", "model": "m", "tools": [], "cwd": "/w"})


def text(value: str, message: str = "msg_1") -> Step:
    return line(
        {
            "type": "assistant",
            "message": {"id": message, "content": [{"type": "text", "text": value}]},
        }
    )


def tool_call(tool_id: str) -> Step:
    block = {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": "make test"}}
    return line({"type": "assistant", "message": {"id": f"m-{tool_id}", "content": [block]}})


def tool_result(tool_id: str, delay: float = 0.0) -> Step:
    block = {"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}
    obj = {"type": "user", "message": {"content": [block]}, "session_id": SESSION}
    return Step("stdout", json.dumps(obj).encode(), delay=delay)


def result(cost: float, *, error: str | None = None, status: int | None = None) -> Step:
    return line(
        {"type": "result", "subtype": "success", "is_error": error is not None,
         "result": error or "done", "num_turns": 1, "total_cost_usd": cost,
         "usage": {"input_tokens": 10, "output_tokens": 5}, "api_error_status": status,
         "terminal_reason": "api_error" if status else None}
    )  # fmt: skip


def rate_limit(status: str, resets_at: float | None) -> Step:
    info: dict[str, Any] = {"status": status, "rateLimitType": "five_hour"}
    if resets_at is not None:
        info["resetsAt"] = resets_at
    if status == "allowed_warning":
        info["utilization"] = 0.9
    return line({"type": "rate_limit_event", "rate_limit_info": info})


def exits(code: int | None, delay: float = 0.0) -> Step:
    return Step("exit", exit=ExitInfo(exit_code=code), delay=delay)


def limited(resets_at: float) -> list[Step]:
    """A process that works, then hits the usage limit (as the CLI reports it)."""
    sentence = "You've hit your 5-hour limit · resets 10:10am (UTC)"
    return [
        init(), text("writing the file"), rate_limit("rejected", resets_at),
        text(sentence, "synthetic"), result(0.5, error=sentence, status=429), exits(1),
    ]  # fmt: skip


def finishes() -> list[Step]:
    return [init(), text("continuing", "msg_2"), result(0.25), exits(0)]


def resumed(command: AgentCommand) -> bool:
    return "--resume" in command.argv


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "data" / "agentfarm.db")
    yield store
    await store.close()


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    backend = FakeBackend(lambda run, command: finishes())
    yield backend
    await backend.shutdown()


@pytest.fixture
async def supervisors(
    tmp_path: Path, store: Store, backend: FakeBackend
) -> AsyncIterator[Callable[..., Supervisor]]:
    made: list[Supervisor] = []

    def make(on: FakeBackend | None = None, **extra: object) -> Supervisor:
        settings = make_settings(tmp_path / "data", **{"park_margin_seconds": 0, **extra})
        secrets = SecretStore(settings.secrets_path)
        sup = Supervisor(
            settings, store, secrets, {"local": on or backend}, {"claude": ClaudeAdapter()}
        )
        made.append(sup)
        return sup

    yield make
    for sup in made:
        await sup.close()


def spec(**fields: Any) -> models.AgentSpec:
    return models.AgentSpec(repo="/srv/repo", prompt="fix it", **fields)


async def statuses(store: Store, run_id: str) -> list[str]:
    events = await store.list_events(run_id)
    return [e.data["status"] for e in events if e.type == models.EventType.run_status]


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(GUARD):
        while not await check():
            await asyncio.sleep(0.01)


async def reaches(store: Store, run_id: str, status: models.RunStatus) -> models.Run:
    async def there() -> bool:
        return (await store.get_run(run_id)).status == status

    await until(there)
    return await store.get_run(run_id)


async def ended(store: Store, run_id: str) -> models.Run:
    async def done() -> bool:
        return (await store.get_run(run_id)).status.terminal

    await until(done)
    return await store.get_run(run_id)


async def played(
    store: Store, backend: FakeBackend, sup: Supervisor, steps: list[Step], **fields: Any
) -> models.Run:
    """A run of ``sup``'s (its spec with ``fields``) whose agent plays ``steps`` (again at
    each resume), to its end: the run as it ended."""
    backend.script = lambda run, command: steps
    run = await sup.submit(spec(**fields))
    await sup.start()
    return await ended(store, run.id)


async def test_a_usage_limit_parks_the_run_and_it_resumes_in_its_session_by_itself(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    reset = time.time() - 1  # already reset: the timer fires at once
    backend.script = lambda run, command: finishes() if resumed(command) else limited(reset)
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.succeeded, done.error
    assert await statuses(store, run.id) == [
        "queued", "starting", "running", "parked", "starting", "running", "succeeded",
    ]  # fmt: skip
    command = backend.commands[run.id]
    assert command.argv[-2:] == ["--resume", SESSION]
    assert b"usage limit has reset" in command.stdin
    assert backend.world.resumes == [run.id]
    # Figures of both processes add up; the limit is remembered; nothing is parked now.
    assert done.cost_usd == pytest.approx(0.75)
    assert done.num_turns == 2
    assert done.usage.input_tokens == 20
    assert done.continuation.parks == 1 and done.continuation.reason == "usage_limit"
    assert done.parked_until is None and done.error is None
    events = await store.list_events(run.id)
    limits = [e.data for e in events if e.type == models.EventType.agent_rate_limit]
    assert limits == [
        {"status": "rejected", "resets_at": float(int(reset)) if reset == int(reset) else reset,
         "limit_type": "five_hour", "utilization": None, "source": "event"}
    ]  # fmt: skip
    parked = next(e for e in events if e.data.get("status") == "parked")
    assert parked.data["reason"] == "usage_limit"
    assert backend.runs[run.id].finalized  # the branch came home once, at the very end


async def test_a_parked_run_shows_when_it_resumes_and_survives_a_restart(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    reset = time.time() + 3600
    backend.script = lambda run, command: finishes() if resumed(command) else limited(reset)
    first = supervisors(park_margin_seconds=60)
    run = await first.submit(spec())
    await first.start()
    parked = await reaches(store, run.id, models.RunStatus.parked)
    assert parked.parked_until is not None
    assert parked.parked_until.timestamp() == pytest.approx(reset + 60, abs=1)
    # Queued runs on the same credentials are held until the reset.
    waiting = await first.submit(spec())
    assert waiting.continuation.credentials_key == parked.continuation.credentials_key
    assert first.parking.holding(waiting)
    (place,) = (await first.queue_info([waiting.id])).values()
    assert place.waiting_for is not None
    assert place.waiting_for.startswith("the model's usage limit of its credentials, until")
    await first.close()

    second = supervisors(on=backend.restarted(), park_margin_seconds=60)
    await second.start()
    again = await store.get_run(run.id)
    assert again.status is models.RunStatus.parked
    assert again.parked_until == parked.parked_until
    assert second.parking.holding(await store.get_run(waiting.id))
    assert (await store.get_run(waiting.id)).status is models.RunStatus.queued
    # A person need not wait.
    await second.resume_run(run.id)
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.succeeded
    assert b"Continue the task" in backend.commands[run.id].stdin
    await second.stop_run(waiting.id)


async def test_stopping_a_parked_run_brings_its_branch_home_and_ends_it_stopped(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = lambda run, command: limited(time.time() + 3600)
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    await reaches(store, run.id, models.RunStatus.parked)
    await sup.stop_run(run.id)
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    assert done.error == "stopped while parked" and done.parked_until is None
    assert backend.runs[run.id].finalized
    assert backend.world.resumes == []
    with pytest.raises(errors.ConflictError):
        await sup.resume_run(run.id)


async def test_resuming_a_run_that_is_not_parked_is_a_conflict(
    store: Store, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors()
    run = await sup.submit(spec())
    with pytest.raises(errors.ConflictError, match="only a parked run"):
        await sup.resume_run(run.id)


async def test_a_run_over_its_parks_ends_failed_with_the_limits_sentence(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = lambda run, command: limited(time.time() - 1)
    sup = supervisors(park_max=1)
    run = await sup.submit(spec())
    await sup.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.failed
    assert done.error is not None and "HTTP 429" in done.error
    assert done.continuation.parks == 1
    assert (await statuses(store, run.id)).count("parked") == 1


async def test_the_sentence_alone_parks_a_run_when_the_cli_prints_no_event(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sentence = f"Claude AI usage limit reached|{int(time.time()) + 7200}"
    steps = [init(), result(0.1, error=sentence, status=429), exits(1)]
    backend.script = lambda run, command: steps
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    parked = await reaches(store, run.id, models.RunStatus.parked)
    assert parked.parked_until is not None
    assert parked.parked_until.timestamp() == pytest.approx(int(sentence.split("|")[1]), abs=1)
    await sup.stop_run(run.id)
    await ended(store, run.id)


async def test_a_usage_limit_warning_is_shown_on_the_run(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    steps = [init(), rate_limit("allowed_warning", time.time() + 3600), result(0.1), exits(0)]
    backend.script = lambda run, command: steps
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.succeeded
    assert done.warning is not None
    assert done.warning.startswith("the model's five-hour limit is close (90% used); it resets at")


# --- the watchdog ---------------------------------------------------------------------------


async def test_a_stalled_model_stream_is_resumed_once_then_fails_naming_the_phase(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors(model_stall_seconds=0.05, tool_quiet_seconds=600)
    done = await played(store, backend, sup, [init(), text("thinking"), exits(0, delay=600)])
    assert done.status is models.RunStatus.failed
    assert done.error == ("stalled: no output for 0 s waiting for the model; the agent was stopped")
    assert done.continuation.stall_resumes == 1
    assert backend.world.resumes == [done.id]
    assert b"stopped responding" in backend.commands[done.id].stdin
    assert await statuses(store, done.id) == [
        "queued", "starting", "running", "parked", "starting", "running", "failed",
    ]  # fmt: skip


async def test_a_quiet_tool_is_not_a_stall(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    # The tool is quiet far longer than the model may be; it is a tool, so that is fine.
    steps = [init(), tool_call("t1"), tool_result("t1", delay=0.5), result(0.1), exits(0)]
    sup = supervisors(model_stall_seconds=0.05, tool_quiet_seconds=GUARD)
    done = await played(store, backend, sup, steps)
    assert done.status is models.RunStatus.succeeded, done.error
    assert backend.world.resumes == []


async def test_a_slow_start_is_not_a_stall_of_the_model(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    """Before its first line the agent is starting (a pod being scheduled, say): the model's
    threshold does not apply, the longer of the two does."""
    late = Step("stdout", data=init().data, delay=0.5)
    sup = supervisors(model_stall_seconds=0.05, tool_quiet_seconds=GUARD, stall_resumes=0)
    done = await played(store, backend, sup, [late, text("done"), result(0.1), exits(0)])
    assert done.status is models.RunStatus.succeeded, done.error
    assert backend.world.resumes == []


async def test_a_start_that_never_prints_is_a_stall_before_its_first_output(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors(model_stall_seconds=0.05, tool_quiet_seconds=0.1, stall_resumes=0)
    done = await played(store, backend, sup, [exits(0, delay=600)])
    assert done.status is models.RunStatus.failed
    assert done.error == "stalled: no output for 0 s before its first output; the agent was stopped"


async def test_a_tool_quiet_too_long_is_a_stall_of_the_tool_phase(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors(stall_resumes=5)
    watchdog = {"tool_quiet_seconds": 0.05, "stall_resumes": 0}
    steps = [init(), tool_call("t1"), exits(0, delay=600)]
    done = await played(store, backend, sup, steps, watchdog=watchdog)
    assert done.status is models.RunStatus.failed
    assert done.error is not None and "while a tool ran" in done.error
    assert backend.world.resumes == []


async def test_a_result_followed_by_a_process_that_does_not_exit_ends_on_its_result(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors(result_grace_seconds=0.05, model_stall_seconds=600)
    done = await played(store, backend, sup, [init(), result(0.1), exits(0, delay=600)])
    assert done.status is models.RunStatus.succeeded, done.error
    assert backend.runs[done.id].stop_requested
    notices = [
        e.data["message"]
        for e in await store.list_events(done.id)
        if e.type == models.EventType.run_notice
    ]
    assert any("reported its result but had not exited" in n for n in notices)


async def test_a_failed_result_then_a_hang_ends_failed_on_that_result(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    steps = [init(), result(0.1, error="boom", status=500), exits(0, delay=600)]
    sup = supervisors(result_grace_seconds=0.05)
    done = await played(store, backend, sup, steps)
    assert done.status is models.RunStatus.failed
    assert done.error is not None and "HTTP 500" in done.error


async def test_a_resume_that_cannot_start_ends_the_run_failed_with_its_branch_home(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = lambda run, command: limited(time.time() + 3600)
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    await reaches(store, run.id, models.RunStatus.parked)
    backend.fail_launch = "the workspace is gone"
    await sup.resume_run(run.id)
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.failed
    assert done.error == "the workspace is gone"
    assert backend.runs[run.id].finalized


async def test_a_person_resuming_early_lets_the_runs_held_on_its_credentials_go(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    first: list[str] = []

    def script(run: models.Run, command: AgentCommand) -> list[Step]:
        if not first:
            first.append(run.id)
            return limited(time.time() + 3600)
        return finishes()

    backend.script = script
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    await reaches(store, run.id, models.RunStatus.parked)
    held = await sup.submit(spec())
    assert sup.parking.holding(held)
    await sup.resume_run(run.id)
    assert not sup.parking.holding(held)
    assert (await ended(store, held.id)).status is models.RunStatus.succeeded
    assert (await ended(store, run.id)).status is models.RunStatus.succeeded
