"""Store plumbing: WAL, the writer thread, the reader pool, closing and reopening."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentfarm.domain import models
from agentfarm.store import Store, db


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("agentfarm-store")]


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[db.Database]:
    database = await db.Database.open(tmp_path / "t.db", readers=2)
    await database.write(lambda c: c.execute("CREATE TABLE t (v INTEGER)"))
    yield database
    await database.close()


async def test_open_creates_directories_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "agentfarm.db"
    store = await Store.open(path)
    try:
        assert path.exists()
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        await store.close()


async def test_connections_have_the_pragmas(database: db.Database) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[int, int, int]:
        return (
            conn.execute("PRAGMA foreign_keys").fetchone()[0],
            conn.execute("PRAGMA synchronous").fetchone()[0],
            conn.execute("PRAGMA busy_timeout").fetchone()[0],
        )

    normal = 1
    expected = (1, normal, db.BUSY_TIMEOUT_MS)
    assert await database.write(pragmas) == expected
    assert await database.read(pragmas) == expected


async def test_reopen_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "agentfarm.db"
    store = await Store.open(path)
    run = await store.create_run(models.Run(spec=models.AgentSpec(repo="/r")))
    await store.append_events(run.id, [models.EventDraft(type="a")], cursor=42)
    await store.close()

    store = await Store.open(path)
    try:
        assert await store.get_run(run.id) == run
        assert await store.get_cursor(run.id) == 42
        assert await store.last_seq(run.id) == 1
    finally:
        await store.close()


async def test_close_stops_the_threads_and_is_idempotent(tmp_path: Path) -> None:
    before = store_threads()
    store = await Store.open(tmp_path / "agentfarm.db")
    await store.list_runs()
    assert len(store_threads()) > len(before)
    await store.close()
    await store.close()
    assert store_threads() == before
    with pytest.raises(db.StoreClosedError, match="closed"):
        await store.list_runs()
    with pytest.raises(db.StoreClosedError):
        await store.create_run(models.Run(spec=models.AgentSpec(repo="/r")))


async def test_close_finishes_queued_writes(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agentfarm.db")
    run = await store.create_run(models.Run(spec=models.AgentSpec(repo="/r")))
    pending = [
        asyncio.ensure_future(store.append_events(run.id, [models.EventDraft(type="a")]))
        for _ in range(20)
    ]
    await asyncio.sleep(0)  # let them enqueue
    await store.close()
    await asyncio.gather(*pending)
    store = await Store.open(tmp_path / "agentfarm.db")
    try:
        assert await store.count_events(run.id) == 20
    finally:
        await store.close()


async def test_a_failing_write_rolls_back_and_reraises(database: db.Database) -> None:
    def fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await database.write(fail)
    assert await database.read(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()) == (0,)


async def test_reads_proceed_while_a_write_is_in_progress(database: db.Database) -> None:
    inserted, release = threading.Event(), threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        inserted.set()
        release.wait(10)

    write = asyncio.ensure_future(database.write(slow_write))
    try:
        assert await asyncio.to_thread(inserted.wait, 10)
        # The writer holds the write lock; a reader sees the last committed snapshot.
        count = await database.read(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone())
        assert count == (0,)
    finally:
        release.set()
        await write
    assert await database.read(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()) == (1,)


async def test_a_write_cancelled_before_it_starts_is_skipped(database: db.Database) -> None:
    started, release = threading.Event(), threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    blocker = asyncio.ensure_future(database.write(block))
    assert await asyncio.to_thread(started.wait, 10)
    queued = asyncio.ensure_future(database.write(lambda c: c.execute("INSERT INTO t VALUES (1)")))
    await asyncio.sleep(0)
    queued.cancel()
    release.set()
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await queued
    # A later write proves the writer went past the cancelled job.
    await database.write(lambda c: c.execute("INSERT INTO t VALUES (2)"))
    assert await database.read(lambda c: c.execute("SELECT v FROM t").fetchall()) == [(2,)]


async def test_readers_are_read_only(database: db.Database) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await database.read(lambda c: c.execute("INSERT INTO t VALUES (1)"))
