"""Store: events, the ingest cursor and the atomicity of ``append_events``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agentfarm.domain import errors, events, models
from agentfarm.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "agentfarm.db")
    yield store
    await store.close()


async def new_run(store: Store) -> models.Run:
    return await store.create_run(models.Run(spec=models.AgentSpec(repo="/srv/repo")))


def drafts(n: int, type_: str = "agent.text", **data: Any) -> list[models.EventDraft]:
    return [models.EventDraft(type=type_, data={"i": i, **data}) for i in range(n)]


async def test_seqs_start_at_one_and_continue_across_batches(store: Store) -> None:
    run = await new_run(store)
    first, updated = await store.append_events(run.id, drafts(3))
    second, _ = await store.append_events(run.id, drafts(2))
    assert updated is None
    assert [e.seq for e in first + second] == [1, 2, 3, 4, 5]
    assert all(e.run_id == run.id for e in first + second)
    assert await store.list_events(run.id) == first + second
    assert await store.last_seq(run.id) == 5
    assert await store.count_events(run.id) == 5


async def test_events_round_trip_exactly(store: Store) -> None:
    run = await new_run(store)
    data = {
        "text": "héllo ✓ 日本",
        "bad_utf8": "\udcff",  # a lone surrogate, as surrogateescape decoding produces
        "nested": {"list": [1, 2.5, None, True], "empty": {}},
        "big": 2**62,
    }
    ts = datetime(2025, 5, 6, 7, 8, 9, 101112, tzinfo=timezone(timedelta(hours=-5)))
    draft = models.EventDraft(type="agent.tool_call", data=data, ts=ts)
    (event,), _ = await store.append_events(run.id, [draft])
    (stored,) = await store.list_events(run.id)
    assert stored == event
    assert stored.data == data
    assert stored.ts == ts
    assert stored.ts.tzinfo is not None


async def test_data_that_is_not_json_is_invalid_input(store: Store) -> None:
    run = await new_run(store)
    with pytest.raises(errors.InvalidInputError, match="JSON"):
        await store.append_events(run.id, [models.EventDraft(type="x", data={"o": object()})])
    assert await store.count_events(run.id) == 0


async def test_unknown_run_is_not_found(store: Store) -> None:
    with pytest.raises(errors.NotFoundError, match="nope"):
        await store.append_events("nope", drafts(1))
    assert await store.last_seq("nope") == 0
    assert await store.get_cursor("nope") == 0
    assert await store.count_events("nope") == 0
    assert await store.list_events("nope") == []


async def test_cursor_and_run_fields_are_saved_with_the_events(store: Store) -> None:
    run = await new_run(store)
    assert await store.get_cursor(run.id) == 0
    started = datetime(2025, 1, 1, tzinfo=UTC)
    events, updated = await store.append_events(
        run.id,
        drafts(2),
        cursor=4096,
        run_fields={"status": models.RunStatus.running, "started_at": started},
    )
    assert len(events) == 2
    assert updated is not None
    assert updated.status is models.RunStatus.running
    assert updated.started_at == started
    assert await store.get_run(run.id) == updated
    assert await store.get_cursor(run.id) == 4096

    # A cursor alone (frames that made no events) and an empty field update.
    events, same = await store.append_events(run.id, [], cursor=5000, run_fields={})
    assert events == []
    assert same == updated
    assert await store.get_cursor(run.id) == 5000
    assert await store.last_seq(run.id) == 2


async def test_a_failing_insert_rolls_everything_back(store: Store) -> None:
    run = await new_run(store)
    await store.append_events(run.id, drafts(1), cursor=10)
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.type = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        conn.commit()
    batch = [*drafts(3), models.EventDraft(type="boom"), *drafts(3)]
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        await store.append_events(
            run.id, batch, cursor=999, run_fields={"status": models.RunStatus.running}
        )
    assert await store.count_events(run.id) == 1
    assert await store.get_cursor(run.id) == 10
    assert (await store.get_run(run.id)).status is models.RunStatus.queued
    # The writer carries on after a failed job.
    events, _ = await store.append_events(run.id, drafts(1), cursor=20)
    assert [e.seq for e in events] == [2]


async def test_invalid_run_fields_roll_the_events_back(store: Store) -> None:
    run = await new_run(store)
    with pytest.raises(errors.InvalidInputError, match="status"):
        await store.append_events(run.id, drafts(5), cursor=7, run_fields={"status": "bogus"})
    with pytest.raises(errors.InvalidInputError, match="colour"):
        await store.append_events(run.id, drafts(5), run_fields={"colour": "red"})
    assert await store.count_events(run.id) == 0
    assert await store.get_cursor(run.id) == 0


@pytest.mark.parametrize("cursor", [-1, True])
async def test_a_bad_cursor_is_invalid_input(store: Store, cursor: int) -> None:
    run = await new_run(store)
    with pytest.raises(errors.InvalidInputError, match="cursor"):
        await store.append_events(run.id, drafts(1), cursor=cursor)


async def test_concurrent_appenders_get_gap_free_unique_seqs(store: Store) -> None:
    runs = [await new_run(store) for _ in range(20)]
    shared = runs[0]

    async def appender(run: models.Run, writer: int) -> None:
        for batch in range(10):
            await store.append_events(
                run.id, drafts(1 + batch % 4, writer=writer), cursor=writer * 100 + batch
            )

    # One appender per run, plus five more all appending to the first run.
    jobs = [appender(run, i) for i, run in enumerate(runs)]
    jobs += [appender(shared, 100 + i) for i in range(5)]
    await asyncio.gather(*jobs)

    per_appender = sum(1 + b % 4 for b in range(10))
    for run in runs:
        events = await store.list_events(run.id, limit=10_000)
        expected = per_appender * (6 if run is shared else 1)
        assert [e.seq for e in events] == list(range(1, expected + 1))
        assert await store.last_seq(run.id) == expected
    # Within each appender, its events keep their order.
    shared_events = await store.list_events(shared.id, limit=10_000)
    for writer in (0, 100, 101, 102, 103, 104):
        mine = [e for e in shared_events if e.data["writer"] == writer]
        assert len(mine) == per_appender
        assert [e.seq for e in mine] == sorted(e.seq for e in mine)


async def test_a_batch_of_200_is_stored_in_order(store: Store) -> None:
    run = await new_run(store)
    events, _ = await store.append_events(run.id, drafts(200))
    assert [e.seq for e in events] == list(range(1, 201))
    assert [e.data["i"] for e in await store.list_events(run.id)] == list(range(200))


async def test_list_events_after_and_limit(store: Store) -> None:
    run = await new_run(store)
    await store.append_events(run.id, drafts(50))
    assert [e.seq for e in await store.list_events(run.id, after=45)] == [46, 47, 48, 49, 50]
    assert [e.seq for e in await store.list_events(run.id, after=10, limit=3)] == [11, 12, 13]
    assert await store.list_events(run.id, after=50) == []
    assert await store.list_events(run.id, limit=0) == []
    with pytest.raises(errors.InvalidInputError):
        await store.list_events(run.id, limit=-1)
    # Paging forward sees everything exactly once.
    seen: list[int] = []
    after = 0
    while page := await store.list_events(run.id, after=after, limit=7):
        seen.extend(e.seq for e in page)
        after = page[-1].seq
    assert seen == list(range(1, 51))


async def test_list_events_before_loads_older_events(store: Store) -> None:
    run = await new_run(store)
    await store.append_events(run.id, drafts(50))
    assert [e.seq for e in await store.list_events_before(run.id, before=11, limit=3)] == [
        8,
        9,
        10,
    ]
    assert [e.seq for e in await store.list_events_before(run.id, before=3)] == [1, 2]
    assert len(await store.list_events_before(run.id, before=51)) == 50
    assert await store.list_events_before(run.id, before=1) == []
    # Paging backwards from the end sees everything exactly once.
    seen: list[int] = []
    before = 51
    while page := await store.list_events_before(run.id, before=before, limit=7):
        seen[:0] = [e.seq for e in page]
        before = page[0].seq
    assert seen == list(range(1, 51))


async def test_events_of_other_runs_stay_apart(store: Store) -> None:
    one, two = await new_run(store), await new_run(store)
    await store.append_events(one.id, drafts(3))
    await store.append_events(two.id, drafts(2), cursor=9)
    assert [e.run_id for e in await store.list_events(two.id)] == [two.id, two.id]
    assert await store.count_events(one.id) == 3
    assert await store.get_cursor(one.id) == 0


async def test_the_stored_text_is_the_events_json_and_is_served_as_it_is(store: Store) -> None:
    run = await new_run(store)
    data = {"text": "héllo ✓", "n": [1, 2.5, None, True], "odd": "\ud800"}
    (appended,), _ = await store.append_events(run.id, [models.EventDraft(type="t", data=data)])
    (stored,) = await store.list_events(run.id)

    def column(conn: sqlite3.Connection) -> str:
        return str(conn.execute("SELECT data FROM events").fetchone()[0])

    text = await store.database.read(column)
    assert appended.data_json() == text
    assert stored.data_json() == text
    assert stored.data == data


async def test_rows_written_by_earlier_versions_are_served_as_valid_json(store: Store) -> None:
    # The store used to write ``json`` with ASCII escapes, and NaN as ``NaN`` (not JSON).
    run = await new_run(store)

    def insert(conn: sqlite3.Connection) -> None:
        for seq, text in ((1, '{"t":"h\\u00e9","x":NaN}'), (2, '{"t":"h\\u00e9"}')):
            conn.execute(
                "INSERT INTO events (run_id, seq, type, ts, data) VALUES (?, ?, 't', ?, ?)",
                (run.id, seq, "2026-01-01T00:00:00.000000+00:00", text),
            )

    await store.database.write(insert)
    with_nan, plain = await store.list_events(run.id)
    assert json.loads(events.event_json(with_nan))["data"] == {"t": "hé", "x": None}
    assert json.loads(events.event_json(plain))["data"] == {"t": "hé"}
