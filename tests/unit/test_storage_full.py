"""A full disk under the data directory: SQLite's "database or disk is full" becomes a
StorageFullError (HTTP 507, the one error shape, what to do), the space kept back is given up
for the ends of runs and made again once there is room, and a write held back by a full disk
lands once there is space."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agentfarm.domain import errors
from agentfarm.store import db
from agentfarm.supervisor import storage
from agentfarm.web import errors as web_errors
from agentfarm.web import openapi


def full() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    return exc


def test_sqlite_full_becomes_a_storage_full_error_that_says_what_to_do(tmp_path: Path) -> None:
    found = db.full_error(full(), tmp_path / "agentfarm.db")
    assert isinstance(found, errors.StorageFullError)
    assert str(tmp_path) in str(found) and "free space" in str(found)
    other = sqlite3.OperationalError("database is locked")
    other.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    assert db.full_error(other, None) is None


async def test_the_api_answers_507_in_the_error_shape() -> None:
    app = FastAPI()
    web_errors.install(app)

    @app.post("/write")
    async def write() -> None:
        raise errors.StorageFullError("the disk is full: free space there, then retry")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        response = await c.post("/write")
    assert response.status_code == 507
    assert response.json() == {
        "error": {
            "code": "storage_full",
            "message": "the disk is full: free space there, then retry",
        }
    }
    assert 507 in openapi.DESCRIPTIONS


def test_the_reserve_is_given_up_and_made_again(tmp_path: Path) -> None:
    reserve = db.Reserve(tmp_path / db.RESERVE_NAME, size=64 * 1024)
    reserve.refill()
    assert reserve.path.stat().st_size == 64 * 1024
    assert reserve.release() and not reserve.path.exists()
    assert not reserve.release()
    reserve.refill()  # tried at most every few seconds while there is no room
    assert not reserve.path.exists()


async def test_a_database_keeps_a_reserve_beside_it(tmp_path: Path) -> None:
    database = await db.Database.open(tmp_path / "agentfarm.db")
    try:
        await database.write(lambda conn: conn.execute("CREATE TABLE t (x)"))
        assert (tmp_path / db.RESERVE_NAME).stat().st_size == db.RESERVE_BYTES
        assert await database.release_reserve()
        assert not (tmp_path / db.RESERVE_NAME).exists()
    finally:
        await database.close()


async def test_a_held_back_write_lands_once_there_is_space() -> None:
    tries: list[int] = []

    async def write() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise errors.StorageFullError("full")

    await storage.when_space(write, first_pause=0.001)
    assert len(tries) == 3


async def test_another_error_ends_the_tries(caplog: pytest.LogCaptureFixture) -> None:
    async def write() -> None:
        raise RuntimeError("broken")

    await storage.when_space(write, first_pause=0.001)
    assert "another reason" in caplog.text
