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
from agentfarm.domain import scopes as scoping
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
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A named token; it acts as its user (``user_id``) with its scopes, bounded by that
    user's role."""

    id: str
    name: str
    created_by: str | None
    created_at: datetime
    last_used_at: datetime | None
    user_id: str = ""
    user_name: str = ""
    user_is_admin: bool = False
    expires_at: datetime | None = None
    scopes: frozenset[scoping.Scope] = scoping.ALL

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True, slots=True)
class Session:
    user_id: str
    user_name: str
    expires_at: datetime
    is_admin: bool = False


_USER_SELECT = "SELECT id, name, password_hash, created_at, is_admin FROM users"
_API_ROWS = (
    "SELECT t.id, t.name, t.created_by, t.created_at, t.last_used_at, t.user_id, u.name, "
    "u.is_admin, t.expires_at, t.scopes FROM api_tokens t JOIN users u ON u.id = t.user_id"
)


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], load_time(row[3]), bool(row[4]))


def _token(row: Any) -> ApiToken:
    return ApiToken(
        row[0],
        row[1],
        row[2],
        load_time(row[3]),
        row[4] and load_time(row[4]),
        row[5],
        row[6],
        bool(row[7]),
        row[8] and load_time(row[8]),
        scoping.parse(row[9]),
    )


class Users:
    """``Users(store.database)``: users, sessions and tokens."""

    def __init__(self, database: db.Database) -> None:
        self._db = database

    # --- users ---------------------------------------------------------------------------
    async def create_user(self, name: str, password_hash: str, *, admin: bool = False) -> User:
        """A new user; admin when asked, and always the first user of an empty database."""
        user_id, created_at = models.new_id(), models.utcnow()

        def insert(conn: sqlite3.Connection) -> bool:
            # In the writer's transaction: two concurrent "first" users cannot both be admin.
            first = conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0
            try:
                conn.execute(
                    "INSERT INTO users (id, name, password_hash, created_at, is_admin) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (user_id, name, password_hash, dump_time(created_at), admin or first),
                )
            except sqlite3.IntegrityError as exc:
                raise errors.ConflictError(f"a user named {name!r} already exists") from exc
            return admin or first

        is_admin = await self._db.write(insert)
        return User(user_id, name, password_hash, created_at, is_admin)

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

    async def set_admin(self, name: str, admin: bool) -> None:
        """Make a user an admin or not; their sessions and tokens follow at their next request."""

        def update(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE users SET is_admin = ? WHERE name = ?", (admin, name)
            ).rowcount

        if not await self._db.write(update):
            raise errors.NotFoundError(f"no user named {name!r}")

    async def get_user(self, name: str) -> User | None:
        def select(conn: sqlite3.Connection) -> Any:
            return conn.execute(f"{_USER_SELECT} WHERE name = ?", (name,)).fetchone()

        row = await self._db.read(select)
        return None if row is None else _user(row)

    async def get_user_by_id(self, user_id: str) -> User | None:
        def select(conn: sqlite3.Connection) -> Any:
            return conn.execute(f"{_USER_SELECT} WHERE id = ?", (user_id,)).fetchone()

        row = await self._db.read(select)
        return None if row is None else _user(row)

    async def list_users(self) -> list[User]:
        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(f"{_USER_SELECT} ORDER BY name").fetchall()

        return [_user(row) for row in await self._db.read(select)]

    async def count_users(self) -> int:
        def select(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])

        return await self._db.read(select)

    async def delete_user(self, name: str) -> None:
        """Delete a user; their sessions and API tokens go with them (foreign keys cascade)."""

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
                "SELECT s.user_id, u.name, s.expires_at, u.is_admin FROM sessions s "
                "JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
                (digest(secret),),
            ).fetchone()

        row = await self._db.read(select)
        if row is None:
            return None
        session = Session(row[0], row[1], load_time(row[2]), bool(row[3]))
        return session if session.expires_at > models.utcnow() else None

    async def delete_session(self, secret: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", (digest(secret),))

        await self._db.write(delete)

    # --- API tokens ----------------------------------------------------------------------
    async def create_token(
        self,
        name: str,
        secret: str,
        owner: User,
        *,
        created_by: str | None = None,
        expires_at: datetime | None = None,
        granted: frozenset[scoping.Scope] = scoping.ALL,
    ) -> ApiToken:
        """A token of ``owner``: it acts with ``granted`` bounded by their role, and dies with
        them."""
        token = ApiToken(
            models.new_id(), name, created_by or owner.name, models.utcnow(), None,
            owner.id, owner.name, owner.is_admin, expires_at, scoping.closure(granted),
        )  # fmt: skip

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO api_tokens (id, name, token_hash, user_id, created_by, "
                    "created_at, expires_at, scopes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        token.id, name, digest(secret), owner.id, token.created_by,
                        dump_time(token.created_at), expires_at and dump_time(expires_at),
                        scoping.dump(token.scopes),
                    ),
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:  # the user was deleted meanwhile
                raise errors.NotFoundError(f"no user named {owner.name!r}") from exc

        await self._db.write(insert)
        return token

    async def list_tokens(self, user_id: str | None = None) -> list[ApiToken]:
        """Every token (``user_id`` None: for admins), or one user's."""

        def select(conn: sqlite3.Connection) -> list[Any]:
            if user_id is None:
                return conn.execute(f"{_API_ROWS} ORDER BY t.created_at DESC").fetchall()
            return conn.execute(
                f"{_API_ROWS} WHERE t.user_id = ? ORDER BY t.created_at DESC", (user_id,)
            ).fetchall()

        return [_token(row) for row in await self._db.read(select)]

    async def find_token(self, secret: str) -> ApiToken | None:
        """The live token with this secret: None when unknown or expired."""

        def select(conn: sqlite3.Connection) -> Any:
            return conn.execute(f"{_API_ROWS} WHERE t.token_hash = ?", (digest(secret),)).fetchone()

        row = await self._db.read(select)
        if row is None:
            return None
        token = _token(row)
        return None if token.expired(models.utcnow()) else token

    async def touch_token(self, token_id: str) -> None:
        now = dump_time(models.utcnow())

        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now, token_id))

        await self._db.write(update)

    async def revoke_token(self, token_id: str, user_id: str | None = None) -> None:
        """Delete a token; with ``user_id``, only if it is that user's."""

        def delete(conn: sqlite3.Connection) -> int:
            if user_id is None:
                return conn.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,)).rowcount
            return conn.execute(
                "DELETE FROM api_tokens WHERE id = ? AND user_id = ?", (token_id, user_id)
            ).rowcount

        if not await self._db.write(delete):
            raise errors.NotFoundError(f"no API token with id {token_id!r}")
