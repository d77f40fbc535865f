"""The users store: roles, token ownership and expiry, the 0003 upgrade of existing data, and
the database file's mode."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from datetime import timedelta
from pathlib import Path

from alembic import command

from agentfarm.domain import models
from agentfarm.store import Store, schema
from agentfarm.store.users import Users


async def test_the_database_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "agentfarm.db"
    old = os.umask(0o022)
    try:
        store = await Store.open(path)
    finally:
        os.umask(old)
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        await Users(store.database).create_user("ada", "hash")  # the WAL exists now
        assert (tmp_path / "agentfarm.db-wal").stat().st_mode & 0o777 == 0o600
    finally:
        await store.close()


async def test_exactly_one_of_concurrent_first_users_is_admin(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agentfarm.db")
    try:
        users = Users(store.database)
        made = await asyncio.gather(*(users.create_user(f"u{i}", "hash") for i in range(5)))
        assert sum(u.is_admin for u in made) == 1
        assert (await users.create_user("root", "hash", admin=True)).is_admin
        stored = {u.name: u.is_admin for u in await users.list_users()}
        assert stored == {u.name: u.is_admin for u in made} | {"root": True}
    finally:
        await store.close()


async def test_tokens_expire_and_go_with_their_user(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agentfarm.db")
    try:
        users = Users(store.database)
        ada = await users.create_user("ada", "hash")
        bob = await users.create_user("bob", "hash")
        past = models.utcnow() - timedelta(seconds=1)
        await users.create_token("old", "secret-old", ada, expires_at=past)
        await users.create_token("live", "secret-live", bob)
        assert await users.find_token("secret-old") is None
        live = await users.find_token("secret-live")
        assert live is not None and live.user_name == "bob" and not live.user_is_admin
        assert [t.name for t in await users.list_tokens(bob.id)] == ["live"]
        assert {t.name for t in await users.list_tokens()} == {"old", "live"}
        await users.delete_user("bob")
        assert await users.find_token("secret-live") is None
        assert [t.name for t in await users.list_tokens()] == ["old"]
    finally:
        await store.close()


async def test_tokens_keep_their_scopes(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agentfarm.db")
    try:
        users = Users(store.database)
        ada = await users.create_user("ada", "hash")
        await users.create_token("everything", "secret-all", ada)
        await users.create_token("ro", "secret-ro", ada, granted=frozenset({"read"}))
        await users.create_token("op", "secret-op", ada, granted=frozenset({"operate"}))
        found = {n: await users.find_token(f"secret-{n}") for n in ("all", "ro", "op")}
        assert {n: t and t.scopes for n, t in found.items()} == {
            "all": {"read", "operate", "admin"},
            "ro": {"read"},
            "op": {"read", "operate"},  # a scope brings the ones below it
        }
        with contextlib.closing(sqlite3.connect(tmp_path / "agentfarm.db")) as conn:
            stored = dict(conn.execute("SELECT name, scopes FROM api_tokens").fetchall())
        assert stored == {"everything": "read,operate,admin", "ro": "read", "op": "read,operate"}
    finally:
        await store.close()


def test_the_upgrade_makes_the_oldest_user_admin_and_gives_tokens_owners(tmp_path: Path) -> None:
    path = tmp_path / "agentfarm.db"
    engine = schema._engine(path)  # a database as the previous version left it
    try:
        with engine.connect() as conn:
            cfg = schema.alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")
    finally:
        engine.dispose()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO users (id, name, password_hash, created_at) VALUES (?, ?, 'h', ?)",
            [
                ("u1", "ada", "2026-01-01T00:00:00+00:00"),
                ("u2", "bob", "2026-02-01T00:00:00+00:00"),
            ],
        )
        conn.executemany(
            "INSERT INTO api_tokens (id, name, token_hash, created_by, created_at) "
            "VALUES (?, ?, ?, ?, '2026-03-01T00:00:00+00:00')",
            [("t1", "a", "h1", "ada"), ("t2", "b", "h2", "bob"), ("t3", "p", "h3", "grace")],
        )
    schema.migrate(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT name, is_admin FROM users ORDER BY name").fetchall() == [
            ("ada", 1),
            ("bob", 0),
        ]
        # grace (a forward-auth user without an account) owned no account: her token is gone.
        assert conn.execute("SELECT id, user_id FROM api_tokens ORDER BY id").fetchall() == [
            ("t1", "u1"),
            ("t2", "u2"),
        ]
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM users WHERE id = 'u2'")
        assert conn.execute("SELECT id FROM api_tokens").fetchall() == [("t1",)]
