"""Store: runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agentfarm.domain import errors, models
from agentfarm.store import Store

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "agentfarm.db")
    yield store
    await store.close()


def make_run(**kwargs: Any) -> models.Run:
    spec = models.AgentSpec(repo="/srv/repo", prompt="Fix the bug", env={"X": "1"})
    return models.Run.model_validate({"spec": spec, **kwargs})


async def test_create_then_get_round_trips(store: Store) -> None:
    run = make_run(config_id="c1", config_name="fix", created_at=T0)
    assert await store.create_run(run) == run
    got = await store.get_run(run.id)
    assert got == run
    assert got.created_at.tzinfo is not None


async def test_duplicate_run_id_is_a_conflict(store: Store) -> None:
    run = await store.create_run(make_run())
    with pytest.raises(errors.ConflictError):
        await store.create_run(run)


async def test_unknown_run_is_not_found(store: Store) -> None:
    with pytest.raises(errors.NotFoundError, match="nope"):
        await store.get_run("nope")
    with pytest.raises(errors.NotFoundError, match="nope"):
        await store.update_run("nope", status=models.RunStatus.running)


async def test_update_run_round_trips_every_field(store: Store) -> None:
    run = await store.create_run(make_run())
    plus2 = timezone(timedelta(hours=2))
    fields: dict[str, Any] = {
        "config_id": "cfg1",
        "config_name": "fixer",
        "spec": models.AgentSpec(repo="https://example.com/r.git", model="opus", max_turns=3),
        "status": models.RunStatus.succeeded,
        "created_at": T0,
        "started_at": datetime(2025, 3, 1, 14, 0, 1, 123456, tzinfo=plus2),
        "finished_at": T0 + timedelta(minutes=5, microseconds=7),
        "branch": "agentfarm/x",
        "workspace": "/data/runs/x/workspace",
        "session_id": "sess-1",
        "cost_usd": 0.1234,
        "usage": models.Usage(input_tokens=1, output_tokens=2, cache_read_input_tokens=3),
        "num_turns": 4,
        "exit_code": 0,
        "error": "nothing: all good ✓",
        "parked_until": T0 + timedelta(hours=5),
        "warning": "usage limit close",
        "continuation": models.Continuation(parks=2, credentials_key="abc", reason="stalled"),
        "origin": "pipeline",
    }
    assert set(fields) == set(models.Run.model_fields) - {"id"}
    updated = await store.update_run(run.id, **fields)
    got = await store.get_run(run.id)
    assert got == updated
    for name, value in fields.items():
        assert getattr(got, name) == value, name
    assert got.started_at is not None
    assert updated.started_at is not None
    assert got.started_at.utcoffset() == updated.started_at.utcoffset() == timedelta(0)


async def test_update_run_validates_values(store: Store) -> None:
    run = await store.create_run(make_run())
    updated = await store.update_run(run.id, status="running", usage={"input_tokens": 5})
    assert updated.status is models.RunStatus.running
    assert updated.usage.input_tokens == 5
    with pytest.raises(errors.InvalidInputError, match="status"):
        await store.update_run(run.id, status="exploded")
    with pytest.raises(errors.InvalidInputError, match="num_turns"):
        await store.update_run(run.id, num_turns="many")
    assert await store.get_run(run.id) == updated


async def test_update_run_rejects_unknown_fields_and_the_id(store: Store) -> None:
    run = await store.create_run(make_run())
    with pytest.raises(errors.InvalidInputError, match=r"colour.*updatable fields are"):
        await store.update_run(run.id, colour="blue")
    with pytest.raises(errors.InvalidInputError, match="id"):
        await store.update_run(run.id, id="other")


async def test_update_run_with_no_fields_returns_the_run(store: Store) -> None:
    run = await store.create_run(make_run())
    assert await store.update_run(run.id) == run


async def test_naive_datetimes_are_taken_as_utc(store: Store) -> None:
    run = await store.create_run(make_run())
    updated = await store.update_run(run.id, started_at=datetime(2025, 1, 1, 8, 30))
    assert updated.started_at == datetime(2025, 1, 1, 8, 30, tzinfo=UTC)
    assert (await store.get_run(run.id)).started_at == updated.started_at


async def test_list_runs_newest_first_with_filters(store: Store) -> None:
    statuses = [models.RunStatus.queued, models.RunStatus.running, models.RunStatus.failed]
    runs = [
        await store.create_run(
            make_run(
                created_at=T0 + timedelta(seconds=i),
                status=statuses[i % 3],
                config_id="cid-a" if i % 2 else "cid-b",
                config_name="alpha" if i % 2 else "beta",
            )
        )
        for i in range(9)
    ]
    newest_first = [r.id for r in reversed(runs)]
    assert [r.id for r in await store.list_runs()] == newest_first
    assert [r.id for r in await store.list_runs(limit=3)] == newest_first[:3]
    assert await store.list_runs(limit=0) == []

    failed = await store.list_runs(statuses=[models.RunStatus.failed])
    assert [r.id for r in failed] == [runs[8].id, runs[5].id, runs[2].id]
    active = await store.list_runs(statuses={models.RunStatus.queued, models.RunStatus.running})
    assert len(active) == 6
    assert await store.list_runs(statuses=[]) == []

    by_name = await store.list_runs(config="alpha")
    by_id = await store.list_runs(config="cid-a")
    assert [r.id for r in by_name] == [r.id for r in by_id] == [runs[i].id for i in (7, 5, 3, 1)]
    both = await store.list_runs(config="alpha", statuses=[models.RunStatus.running])
    assert [r.id for r in both] == [runs[7].id, runs[1].id]
    assert await store.list_runs(config="nope") == []


async def test_list_runs_pages_with_before(store: Store) -> None:
    runs = [
        await store.create_run(make_run(created_at=T0 + timedelta(milliseconds=i)))
        for i in range(25)
    ]
    seen: list[str] = []
    before: datetime | None = None
    while page := await store.list_runs(limit=10, before=before):
        seen.extend(r.id for r in page)
        before = page[-1].created_at
    assert seen == [r.id for r in reversed(runs)]


async def test_list_runs_rejects_bad_arguments(store: Store) -> None:
    with pytest.raises(errors.InvalidInputError):
        await store.list_runs(limit=-1)
    with pytest.raises(errors.InvalidInputError, match="status"):
        await store.list_runs(statuses=["bogus"])  # type: ignore[list-item]


async def test_active_runs_oldest_first(store: Store) -> None:
    made = {}
    for i, status in enumerate(models.RunStatus):
        run = make_run(created_at=T0 - timedelta(minutes=i), status=status)
        made[status] = await store.create_run(run)
    active = await store.active_runs()
    assert {r.status for r in active} == set(models.ACTIVE_STATUSES)
    assert [r.created_at for r in active] == sorted(r.created_at for r in active)


async def test_a_stopped_queued_run_cannot_start(store: Store) -> None:
    # The race of issue 7: the dispatcher saw the run queued, a stop ended it, then the
    # launch tried to record `starting`: the store refuses, and the events with it.
    run = await store.create_run(make_run())
    await store.update_run(run.id, status=models.RunStatus.stopped)
    with pytest.raises(errors.StatusConflictError, match="is stopped; it cannot become starting"):
        await store.update_run(run.id, status=models.RunStatus.starting)
    draft = models.EventDraft(type=models.EventType.run_status, data={"status": "starting"})
    with pytest.raises(errors.StatusConflictError) as caught:
        await store.append_events(run.id, [draft], run_fields={"status": models.RunStatus.starting})
    assert caught.value.current == "stopped"
    assert (await store.get_run(run.id)).status is models.RunStatus.stopped
    assert await store.count_events(run.id) == 0


@pytest.mark.parametrize("terminal", sorted(models.TERMINAL_STATUSES))
async def test_nothing_leaves_a_terminal_status(store: Store, terminal: models.RunStatus) -> None:
    run = await store.create_run(make_run(status=terminal))
    for status in models.RunStatus:
        with pytest.raises(errors.StatusConflictError):
            await store.update_run(run.id, status=status, error="late")
    assert (await store.get_run(run.id)).error is None
    # Other fields of a finished run may still change (retention clears the workspace).
    assert (await store.update_run(run.id, workspace=None)).status is terminal


async def test_a_started_run_never_goes_back(store: Store) -> None:
    run = await store.create_run(make_run())
    await store.update_run(run.id, status=models.RunStatus.starting)
    with pytest.raises(errors.StatusConflictError):
        await store.update_run(run.id, status=models.RunStatus.queued)
    await store.update_run(run.id, status=models.RunStatus.running)
    await store.update_run(run.id, status=models.RunStatus.running, num_turns=2)
    for back in (models.RunStatus.queued, models.RunStatus.starting):
        with pytest.raises(errors.StatusConflictError):
            await store.update_run(run.id, status=back)
    assert (await store.update_run(run.id, status="succeeded")).status is models.RunStatus.succeeded


async def test_only_a_running_run_parks_and_a_parked_one_resumes_or_ends(store: Store) -> None:
    run = await store.create_run(make_run())
    for early in (models.RunStatus.queued, models.RunStatus.starting):
        if early is not models.RunStatus.queued:
            await store.update_run(run.id, status=early)
        with pytest.raises(errors.StatusConflictError, match="cannot become parked"):
            await store.update_run(run.id, status=models.RunStatus.parked)
    await store.update_run(run.id, status=models.RunStatus.running)
    parked = await store.update_run(run.id, status=models.RunStatus.parked, parked_until=T0)
    assert parked.status is models.RunStatus.parked and parked.parked_until == T0
    assert [r.id for r in await store.active_runs()] == [run.id]  # not ended
    with pytest.raises(errors.StatusConflictError):
        await store.update_run(run.id, status=models.RunStatus.queued)
    await store.update_run(run.id, status=models.RunStatus.starting, parked_until=None)
    await store.update_run(run.id, status=models.RunStatus.running)
    await store.update_run(run.id, status=models.RunStatus.parked)
    assert (await store.update_run(run.id, status="stopped")).status is models.RunStatus.stopped


async def test_racing_status_changes_exactly_one_wins(store: Store) -> None:
    runs = [await store.create_run(make_run()) for _ in range(10)]

    async def change(run_id: str, status: models.RunStatus) -> bool:
        try:
            await store.update_run(run_id, status=status)
        except errors.StatusConflictError:
            return False
        return True

    starting, stopped = models.RunStatus.starting, models.RunStatus.stopped
    for i, run in enumerate(runs):
        # Two launchers, or a stop and a launch, race to take the queued run.
        contenders = [starting, starting] if i % 2 else [stopped, starting]
        won = await asyncio.gather(*(change(run.id, s) for s in contenders))
        assert won == [True, False]
        assert (await store.get_run(run.id)).status is contenders[0]


@pytest.mark.parametrize("terminal", sorted(models.TERMINAL_STATUSES))
async def test_an_ended_run_goes_back_to_starting_only_when_reopened_and_once(
    store: Store, terminal: models.RunStatus
) -> None:
    from agentfarm.store.store import REOPEN

    run = await store.create_run(make_run(status=terminal))
    if terminal not in models.CONTINUABLE_STATUSES:  # lost: nothing to continue
        with pytest.raises(errors.StatusConflictError):
            await store.update_run(run.id, status=models.RunStatus.starting, **{REOPEN: True})
        return
    with pytest.raises(errors.StatusConflictError):  # reopened, but only to starting
        await store.update_run(run.id, status=models.RunStatus.running, **{REOPEN: True})
    again = await store.update_run(
        run.id, status=models.RunStatus.starting, finished_at=None, **{REOPEN: True}
    )
    assert again.status is models.RunStatus.starting and again.finished_at is None
    with pytest.raises(errors.StatusConflictError):  # a second continue loses the race
        await store.update_run(run.id, status=models.RunStatus.starting, **{REOPEN: True})
    queued = await store.create_run(make_run())
    with pytest.raises(errors.StatusConflictError):  # REOPEN opens no other door
        await store.update_run(queued.id, status=models.RunStatus.parked, **{REOPEN: True})
