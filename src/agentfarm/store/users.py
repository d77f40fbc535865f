"""Cockpit users, login sessions and named API tokens, on the store's database.

Only hashes are stored: argon2 for passwords (computed by the web layer), sha256 for session
cookies and API tokens (random 256-bit values, so a fast hash is enough and keeps the per-request
lookup cheap). A stolen database therefore hands out neither passwords nor live credentials.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agentfarm.domain import errors, models
from agentfarm.store import db
from agentfarm.store.mapping import dump_time, load_time


def digest(secret: str) -> str:
    """The stored form of a session cookie or API token."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    password_hash: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: str
    name: str
    created_by: str | None
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class Session:
    user_id: str
    user_name: str
    expires_at: datetime


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], load_time(row[3]))


def _token(row: Any) -> ApiToken:
    return ApiToken(row[0], row[1], row[2], load_time(row[3]), row[4] and load_time(row[4]))


class Users:
    """``Users(store.database)``: users, sessions and tokens."""

    def __init__(self, database: db.Database) -> None:
        self._db = database

    # --- users ---------------------------------------------------------------------------
    async def create_user(self, name: str, password_hash: str) -> User:
        user = User(models.new_id(), name, password_hash, models.utcnow())

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO users (id, name, password_hash, created_at) VALUES (?, ?, ?, ?)",
                    (user.id, user.name, user.password_hash, dump_time(user.created_at)),
                )
            except sqlite3.IntegrityError as exc:
                raise errors.ConflictError(f"a user named {name!r} already exists") from exc

        await self._db.write(insert)
        return user

    async def set_password(self, name: str, password_hash: str) -> None:
        """Replace a user's password and end all of their sessions."""

        def update(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                return 0
            conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, row[0]))
            conn.execute("DELETE FROM sessions WHERE user_id = ?", (row[0],))
            return 1

        if not await self._db.write(update):
            raise errors.NotFoundError(f"no user named {name!r}")

    async def get_user(self, name: str) -> User | None:
        def select(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT id, name, password_hash, created_at FROM users WHERE name = ?", (name,)
            ).fetchone()

        row = await self._db.read(select)
        return None if row is None else _user(row)

    async def list_users(self) -> list[User]:
        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT id, name, password_hash, created_at FROM users ORDER BY name"
            ).fetchall()

        return [_user(row) for row in await self._db.read(select)]

    async def count_users(self) -> int:
        def select(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])

        return await self._db.read(select)

    async def delete_user(self, name: str) -> None:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount

        if not await self._db.write(delete):
            raise errors.NotFoundError(f"no user named {name!r}")

    # --- sessions ------------------------------------------------------------------------
    async def create_session(self, user: User, secret: str, lifetime: timedelta) -> Session:
        now = models.utcnow()
        session = Session(user.id, user.name, now + lifetime)

        def insert(conn: sqlite3.Connection) -> None:
            # Expired sessions are swept on each login: no background task needed.
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (dump_time(now),))
            conn.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (digest(secret), user.id, dump_time(now), dump_time(session.expires_at)),
            )

        await self._db.write(insert)
        return session

    async def get_session(self, secret: str) -> Session | None:
        def select(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT s.user_id, u.name, s.expires_at FROM sessions s "
                "JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
                (digest(secret),),
            ).fetchone()

        row = await self._db.read(select)
        if row is None:
            return None
        session = Session(row[0], row[1], load_time(row[2]))
        return session if session.expires_at > models.utcnow() else None

    async def delete_session(self, secret: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", (digest(secret),))

        await self._db.write(delete)

    # --- API tokens ----------------------------------------------------------------------
    async def create_token(self, name: str, secret: str, created_by: str | None) -> ApiToken:
        token = ApiToken(models.new_id(), name, created_by, models.utcnow(), None)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO api_tokens (id, name, token_hash, created_by, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (token.id, name, digest(secret), created_by, dump_time(token.created_at)),
            )

        await self._db.write(insert)
        return token

    async def list_tokens(self) -> list[ApiToken]:
        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT id, name, created_by, created_at, last_used_at FROM api_tokens "
                "ORDER BY created_at DESC"
            ).fetchall()

        return [_token(row) for row in await self._db.read(select)]

    async def find_token(self, secret: str) -> ApiToken | None:
        def select(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT id, name, created_by, created_at, last_used_at FROM api_tokens "
                "WHERE token_hash = ?",
                (digest(secret),),
            ).fetchone()

        row = await self._db.read(select)
        return None if row is None else _token(row)

    async def touch_token(self, token_id: str) -> None:
        now = dump_time(models.utcnow())

        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now, token_id))

        await self._db.write(update)

    async def revoke_token(self, token_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,)).rowcount

        if not await self._db.write(delete):
            raise errors.NotFoundError(f"no API token with id {token_id!r}")
