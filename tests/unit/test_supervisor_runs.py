"""The supervisor's run lifecycle on the fake backend, through its public methods: dispatch
(the concurrency cap, queue order), stop, resume after a restart, and the races between them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.backends import fake
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import errors, models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import make_settings
from tests.unit.supervisor_kit import GUARD, ended, has_status, slow_script, spec, until


@pytest.fixture
def backend_script() -> fake.Script:
    return slow_script


async def statuses(store: Store, run_id: str) -> list[str]:
    events = await store.list_events(run_id)
    return [e.data["status"] for e in events if e.type == models.EventType.run_status]


async def test_a_run_stopped_while_the_dispatcher_looks_is_never_launched(
    store: Store,
    backend: FakeBackend,
    supervisors: Callable[..., Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = supervisors()
    run = await sup.submit(spec())
    # The dispatcher plans with the queued run in its plan, then waits here while the stop
    # lands. (Its next plan, with nothing queued, reads no run: it is watched here, not the
    # store.)
    real = sup.dispatcher.plan
    looked, gate = asyncio.Event(), asyncio.Event()

    async def gated(launching: set[str]) -> Any:
        plan = await real(launching)
        looked.set()
        await gate.wait()
        return plan

    monkeypatch.setattr(sup.dispatcher, "plan", gated)
    await sup.start()
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


async def _stopped_while_starting_then_killed(
    store: Store,
    backend: FakeBackend,
    supervisors: Callable[..., Supervisor],
    monkeypatch: pytest.MonkeyPatch,
    *,
    started: bool,
) -> models.Run:
    """A run stopped (202) while its launch is in the backend, then the control plane is
    killed before the launch returned; ``started``: whether the backend had started the agent."""
    first = supervisors()
    real_launch = backend.launch
    launching, never = asyncio.Event(), asyncio.Event()

    async def launch(run: models.Run, launch_spec: LaunchSpec) -> Any:
        if started:
            await real_launch(run, launch_spec)
        launching.set()
        await never.wait()  # the kill comes first

    monkeypatch.setattr(backend, "launch", launch)
    run = await first.submit(spec())
    await first.start()
    async with asyncio.timeout(GUARD):
        await launching.wait()
    await first.stop_run(run.id)
    notes = [e.data for e in await store.list_events(run.id) if e.type == "run.notice"]
    assert notes and notes[-1]["stop_asked"] is True
    await first.close()  # killed: the stop lived only in its memory before
    return run


@pytest.mark.parametrize("started", [False, True])
async def test_a_stop_answered_while_starting_holds_after_a_restart(
    store: Store,
    backend: FakeBackend,
    supervisors: Callable[..., Supervisor],
    monkeypatch: pytest.MonkeyPatch,
    started: bool,
) -> None:
    run = await _stopped_while_starting_then_killed(
        store, backend, supervisors, monkeypatch, started=started
    )
    restarted = backend.restarted()

    async def knows(r: models.Run) -> bool:  # a backend that can tell (as the local one)
        return r.id in restarted.runs

    restarted.started = knows  # type: ignore[attr-defined]
    second = supervisors(restarted)
    await second.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    if started:  # reattached, then stopped
        assert backend.runs[run.id].stop_requested
    else:  # not launched again
        assert done.error == "stopped before it started"
        assert run.id not in restarted.runs


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
    assert got.branch == "agentfarm/x"  # the stored branch: a run's branch may be named
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

    async def attach(r: models.Run, **kwargs: Any) -> Any:
        attaching.set()
        await gate.wait()
        return await real_attach(r, **kwargs)

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


# --- dispatch, stop and resume through the public methods -------------------------------------


def assistant_line(text: str) -> bytes:
    return json.dumps(
        {
            "type": "assistant",
            "session_id": "s",
            "message": {"id": f"m-{text}", "content": [{"type": "text", "text": text}]},
        }
    ).encode()


async def texts_of(store: Store, run_id: str) -> list[str]:
    events = await store.list_events(run_id)
    return [e.data["text"] for e in events if e.type == models.EventType.agent_text]


async def test_the_concurrency_cap_holds_runs_queued_and_frees_slots_oldest_first(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors(max_concurrent_runs=2)
    runs = [await sup.submit(spec()) for _ in range(4)]
    await sup.start()
    for run in runs[:2]:
        await has_status(store, run.id, models.RunStatus.running)
    # Nothing else to wait for: the dispatcher has filled both slots and goes no further.
    assert [(await store.get_run(r.id)).status for r in runs[2:]] == [models.RunStatus.queued] * 2
    assert list(backend.runs) == [r.id for r in runs[:2]]
    await sup.stop_run(runs[1].id)
    await has_status(store, runs[2].id, models.RunStatus.running)  # the oldest waiting run
    assert (await store.get_run(runs[3].id)).status is models.RunStatus.queued
    assert list(backend.runs) == [r.id for r in runs[:3]]
    await sup.stop_run(runs[0].id)
    await has_status(store, runs[3].id, models.RunStatus.running)
    assert list(backend.runs) == [r.id for r in runs]


async def test_one_slot_launches_runs_in_the_order_they_were_submitted(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors(max_concurrent_runs=1)
    runs = [await sup.submit(spec()) for _ in range(3)]
    await sup.start()
    for run in runs:
        await has_status(store, run.id, models.RunStatus.running)
        assert list(backend.runs)[-1] == run.id
        await sup.stop_run(run.id)
        assert (await ended(store, run.id)).status is models.RunStatus.stopped
    assert list(backend.runs) == [r.id for r in runs]


async def test_a_run_goes_from_queued_to_succeeded_with_its_output_stored(
    store: Store, supervisors: Callable[..., Supervisor]
) -> None:
    backend = FakeBackend()  # the default script: a short successful conversation
    try:
        sup = Supervisor(
            make_settings(store.path.parent),
            store,
            SecretStore(store.path.parent / "secrets.json"),
            {"local": backend},
            {"claude": ClaudeAdapter()},
        )
        run = await sup.submit(spec())
        await sup.start()
        done = await ended(store, run.id)
        await sup.close()
    finally:
        await backend.shutdown()
    assert done.status is models.RunStatus.succeeded
    assert done.exit_code == 0 and done.error is None
    assert done.num_turns == 1 and done.cost_usd == 0.0012
    assert await statuses(store, run.id) == ["queued", "starting", "running", "succeeded"]
    assert await texts_of(store, run.id) == ["Working on: fix it"]
    assert backend.runs[run.id].finalized and backend.runs[run.id].output_discarded


async def test_stopping_a_running_run_stops_its_agent_and_ends_it_stopped(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    await has_status(store, run.id, models.RunStatus.running)
    returned = await sup.stop_run(run.id)
    assert returned.status is models.RunStatus.running  # the stop is asked; the agent ends it
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    assert await statuses(store, run.id) == ["queued", "starting", "running", "stopped"]
    state = backend.runs[run.id]
    assert state.stop_requested and state.finalized and state.output_discarded
    with pytest.raises(errors.ConflictError):
        await sup.stop_run(run.id)  # it has ended: nothing to stop


async def test_a_queued_run_is_stopped_without_ever_reaching_the_backend(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors()
    run = await sup.submit(spec())  # not started: nothing dispatches it
    stopped = await sup.stop_run(run.id)
    assert stopped.status is models.RunStatus.stopped
    assert stopped.finished_at is not None
    await sup.start()
    assert await statuses(store, run.id) == ["queued", "stopped"]
    assert run.id not in backend.runs


async def test_a_new_supervisor_resumes_a_running_run_without_losing_or_doubling_events(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    first = supervisors()
    run = await first.submit(spec())
    await first.start()
    await has_status(store, run.id, models.RunStatus.running)
    state = backend.runs[run.id]
    assert state.task is not None
    state.task.cancel()  # the script's own end is replaced by the records below
    state.append("stdout", assistant_line("before the restart"))

    async def first_text_stored() -> bool:
        return await texts_of(store, run.id) == ["before the restart"]

    await until(first_text_stored)
    await first.close()  # the server goes away; the agent keeps working and writing
    state.append("stdout", assistant_line("while nobody watched"))
    second = supervisors()
    await second.start()

    async def second_text_stored() -> bool:
        return len(await texts_of(store, run.id)) == 2

    await until(second_text_stored)
    state.append("stdout", assistant_line("after the restart"))
    state.append("exit", exit=ExitInfo(exit_code=0))
    done = await ended(store, run.id)
    assert await texts_of(store, run.id) == [
        "before the restart",
        "while nobody watched",
        "after the restart",
    ]
    events = await store.list_events(run.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events].count(models.EventType.agent_init) == 1  # not replayed
    assert await statuses(store, run.id) == ["queued", "starting", "running", "failed"]
    # The fake agent wrote no result line: the parser says so, as for a real one.
    assert done.status is models.RunStatus.failed and done.exit_code == 0


async def test_a_run_that_vanished_while_the_server_was_down_is_lost(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    first = supervisors()
    run = await first.submit(spec())
    await first.start()
    await has_status(store, run.id, models.RunStatus.running)
    await first.close()
    backend.lose(run.id)
    second = supervisors()
    await second.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.lost
    assert await statuses(store, run.id) == ["queued", "starting", "running", "lost"]


async def test_a_run_whose_backend_is_gone_after_a_restart_is_lost(
    tmp_path: Path, store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    first = supervisors()
    run = await first.submit(spec())
    await first.start()
    await has_status(store, run.id, models.RunStatus.running)
    await first.close()
    settings = make_settings(tmp_path / "data")
    second = Supervisor(
        settings, store, SecretStore(settings.secrets_path), {}, {"claude": ClaudeAdapter()}
    )
    try:
        await second.start()
        done = await ended(store, run.id)
    finally:
        await second.close()
    assert done.status is models.RunStatus.lost
    assert await statuses(store, run.id) == ["queued", "starting", "running", "lost"]


async def test_runs_still_queued_at_a_restart_are_dispatched_by_the_new_supervisor(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    first = supervisors()
    run = await first.submit(spec())
    await first.close()  # never started: the run waits in the store
    second = supervisors()
    await second.start()
    await has_status(store, run.id, models.RunStatus.running)
    assert list(backend.runs) == [run.id]


async def test_a_failed_launch_ends_the_run_failed_redacted_and_cleaned_up(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors()
    sup.secrets.set("GITHUB_TOKEN", "ghp_stored0123456789")
    backend.fail_launch = "the sandbox would not start (token ghp_stored0123456789)"
    run = await sup.submit(spec())
    await sup.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.failed
    assert done.error == "the sandbox would not start (token [redacted:GITHUB_TOKEN])"
    assert await statuses(store, run.id) == ["queued", "starting", "failed"]
    assert backend.cleaned == [run.id]


async def test_a_follow_up_reaches_the_agent_and_is_recorded(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors()
    run = await sup.submit(spec())
    with pytest.raises(errors.ConflictError):
        await sup.send(run.id, "too early")  # queued: no agent to talk to
    await sup.start()
    await has_status(store, run.id, models.RunStatus.running)
    await sup.send(run.id, "and the tests too")
    assert backend.runs[run.id].stdin == [ClaudeAdapter().followup("and the tests too")]
    events = await store.list_events(run.id)
    assert [e.data for e in events if e.type == models.EventType.user_message] == [
        {"text": "and the tests too"}
    ]
    await sup.stop_run(run.id)
    await ended(store, run.id)


async def test_the_watchdog_stops_a_silent_agent_and_fails_the_run(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    # slow_script goes quiet for ten minutes, waiting for the model; no resume after a stall
    sup = supervisors(model_stall_seconds=0.05, stall_resumes=0)
    run = await sup.submit(spec())
    await sup.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.failed  # not `stopped`: nobody asked for the stop
    assert done.error is not None
    assert backend.runs[run.id].stop_requested
    events = await store.list_events(run.id)
    kinds = [e.type for e in events]
    assert kinds.count(models.EventType.run_notice) == 1
    assert kinds.index(models.EventType.run_notice) < len(kinds) - 1  # said before the end
    assert await statuses(store, run.id) == ["queued", "starting", "running", "failed"]


async def test_an_agent_killed_for_memory_fails_naming_the_limit_to_raise(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    def oom(run: models.Run, command: AgentCommand) -> list[Step]:
        killed = ExitInfo(exit_code=None, signal=9, oom_killed=True)
        return [*fake.claude_like_script(run, command)[:2], Step("exit", exit=killed)]

    backend.script = oom
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.failed
    assert done.exit_code is None
    memory = run.spec.backend.sandbox.memory_mb
    assert done.error == (
        f"the agent ran out of memory (limit {memory} MiB) and was killed; "
        "raise backend.sandbox.memory_mb"
    )
    events = await store.list_events(run.id)
    assert events[-1].data == {"status": "failed", "error": done.error}


async def test_a_failing_finalize_is_a_notice_and_the_run_still_ends(
    store: Store,
    backend: FakeBackend,
    supervisors: Callable[..., Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def finalize(self: fake.FakeHandle) -> list[str]:
        raise OSError("the disk is full")

    monkeypatch.setattr(fake.FakeHandle, "finalize", finalize)
    backend.script = fake.claude_like_script
    sup = supervisors()
    run = await sup.submit(spec())
    await sup.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.succeeded
    events = await store.list_events(run.id)
    assert [e.type for e in events[-2:]] == [
        models.EventType.run_notice,
        models.EventType.run_status,
    ]

    async def discarded() -> bool:  # right after the run is stored as ended
        return backend.runs[run.id].output_discarded

    await until(discarded)
    assert await store.get_cursor(run.id) == len(backend.runs[run.id].records)


async def test_a_failed_launch_masks_credentials_from_the_environment_too(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors()
    key = sup.settings.anthropic_api_key
    assert key is not None
    backend.fail_launch = f"the sandbox would not start (key {key.get_secret_value()})"
    run = await sup.submit(spec())
    await sup.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.failed
    assert done.error == "the sandbox would not start (key [redacted:ANTHROPIC_API_KEY])"


async def test_the_backends_launch_notices_are_redacted_too(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors()
    key = sup.settings.anthropic_api_key
    assert key is not None
    backend.script = fake.claude_like_script
    backend.world.launch_notices = [f"cloned with key {key.get_secret_value()}"]
    run = await sup.submit(spec())
    await sup.start()
    await ended(store, run.id)
    notices = [
        e.data["message"]
        for e in await store.list_events(run.id)
        if e.type == models.EventType.run_notice
    ]
    assert "cloned with key [redacted:ANTHROPIC_API_KEY]" in notices
    assert not any(key.get_secret_value() in n for n in notices)


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
