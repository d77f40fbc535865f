"""The AFK pipeline's records on the store's database: forges, webhook deliveries seen, the
issues the forges showed, attempts at them, farm-wide flags and orchestration dispatches.

Each model is stored whole as JSON in ``data``; the columns beside it are copies of the fields
that are looked up or constrained, written from the model on every save. At most one active
attempt per issue is the partial unique index ``uq_attempts_one_active_per_issue``: the check
happens inside SQLite, so two deliveries racing for one issue cannot both start an attempt, and
the loser gets a :class:`~agentfarm.domain.errors.ConflictError`.

Every SQL text here is a constant; values only ever travel as parameters.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from agentfarm.domain import errors, models
from agentfarm.domain import pipeline as domain
from agentfarm.store import db, looks
from agentfarm.store.mapping import dump_time, load_time

#: Delivery ids are remembered this long; a forge redelivers within hours, not weeks.
DELIVERY_RETENTION = timedelta(days=30)
#: Older deliveries removed per insert, at most: the prune stays cheap and keeps pace.
_PRUNE_BATCH = 100
#: Longer delivery ids are not from a forge (GitHub's are UUIDs, Forgejo's too).
MAX_DELIVERY_ID = 200

# A name may look like another forge's id: an id match wins.
_FORGE_BY_ID_OR_NAME = "WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
_FORGE_SELECT = f"SELECT data FROM forges {_FORGE_BY_ID_OR_NAME}"  # noqa: S608 (constants)
_FORGE_INSERT = "INSERT INTO forges (id, name, data, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
_FORGE_ID = f"SELECT id FROM forges {_FORGE_BY_ID_OR_NAME}"  # noqa: S608 (constants)

_ISSUES_ALL = "SELECT data FROM tracked_issues ORDER BY seen_at DESC, rowid DESC LIMIT ?"
_ISSUES_OF_FORGE = (
    "SELECT data FROM tracked_issues WHERE forge_id = ? ORDER BY seen_at DESC, rowid DESC LIMIT ?"
)

_ATTEMPT_COLUMNS = (
    "forge_id, repo, number, state, active, run_id, branch, pr_number, data, created_at, updated_at"
)
_ATTEMPT_INSERT = f"INSERT INTO attempts (id, {_ATTEMPT_COLUMNS}) VALUES (?{', ?' * 11})"  # noqa: S608
_ATTEMPT_UPDATE = (
    "UPDATE attempts SET forge_id = ?, repo = ?, number = ?, state = ?, active = ?, run_id = ?, "
    "branch = ?, pr_number = ?, data = ?, created_at = ?, updated_at = ? WHERE id = ?"
)
_NEWEST = " ORDER BY created_at DESC, rowid DESC"
_ATTEMPT_SELECT = "SELECT data FROM attempts"
#: ``list_attempts``' filters, in the order of its arguments; the SQL is composed only of these.
_ATTEMPT_FILTERS = ("forge_id = ?", "repo = ?", "number = ?", "active = ?")
_ACTIVE_FOR_ISSUE = f"SELECT id FROM attempts WHERE {looks.KEY} AND active = 1"  # noqa: S608
_NEXT_SEQ = (
    "SELECT COALESCE(MAX(CAST(json_extract(data, '$.seq') AS INTEGER)), 0) + 1 "
    "FROM attempts WHERE forge_id = ? AND repo = ? AND number = ?"
)
_ATTEMPTS_FOR_PULL = (
    "SELECT data FROM attempts WHERE forge_id = ? AND repo = ? AND pr_number = ?"
    " ORDER BY created_at DESC, rowid DESC"
)
_BRANCH_TAKEN = "SELECT 1 FROM attempts WHERE forge_id = ? AND repo = ? AND branch = ? LIMIT 1"

_FLAG_UPSERT = (
    "INSERT INTO flags (name, value, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
_DISPATCH_SELECT = (
    "SELECT key, caller, digest, run_id, created_at FROM dispatches WHERE caller = ? AND key = ?"
)
_DISPATCH_INSERT = (
    "INSERT INTO dispatches (caller, key, digest, run_id, created_at) VALUES (?, ?, ?, ?, ?)"
)


class PipelineStore:
    """``PipelineStore(store.database)``: the pipeline's forges, issues and attempts."""

    def __init__(self, database: db.Database) -> None:
        self._db = database

    async def _row(self, sql: str, params: Sequence[Any]) -> Any:
        return await self._db.read(lambda conn: conn.execute(sql, params).fetchone())

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._db.read(lambda conn: conn.execute(sql, params).fetchall())

    # --- forges --------------------------------------------------------------------------
    async def create_forge(self, forge: domain.Forge) -> domain.Forge:
        row = (forge.id, forge.name, forge.model_dump_json(),
               dump_time(forge.created_at), dump_time(forge.updated_at))  # fmt: skip
        await self._db.insert(_FORGE_INSERT, row, lambda _, exc: _forge_conflict(forge, exc))
        return forge

    async def get_forge(self, id_or_name: str) -> domain.Forge:
        row = await self._row(_FORGE_SELECT, (id_or_name,))
        if row is None:
            raise _forge_not_found(id_or_name)
        return domain.Forge.model_validate_json(row[0])

    async def list_forges(self) -> list[domain.Forge]:
        rows = await self._rows("SELECT data FROM forges ORDER BY name")
        return [domain.Forge.model_validate_json(row[0]) for row in rows]

    async def update_forge(self, forge: domain.Forge) -> domain.Forge:
        """Replace the forge with id ``forge.id``; keeps ``created_at``, sets ``updated_at``."""
        now = models.utcnow()

        def update(conn: sqlite3.Connection) -> domain.Forge:
            row = conn.execute("SELECT created_at FROM forges WHERE id = ?", (forge.id,)).fetchone()
            if row is None:
                raise _forge_not_found(forge.id)
            saved = forge.model_copy(update={"created_at": load_time(row[0]), "updated_at": now})
            try:
                conn.execute(
                    "UPDATE forges SET name = ?, data = ?, updated_at = ? WHERE id = ?",
                    (saved.name, saved.model_dump_json(), dump_time(now), saved.id),
                )
            except sqlite3.IntegrityError as exc:
                raise _forge_conflict(forge, exc) from exc
            return saved

        return await self._db.write(update)

    async def delete_forge(self, id_or_name: str) -> None:
        """Delete a forge with everything recorded of it: deliveries, issues and attempts.

        It does not stop runs: a caller stops the forge's active attempts' runs first."""

        def delete(conn: sqlite3.Connection) -> bool:
            row = conn.execute(_FORGE_ID, (id_or_name,)).fetchone()
            if row is None:
                return False
            for table in ("forge_deliveries", "tracked_issues", "attempts"):
                conn.execute(_DELETE_OF_FORGE[table], (row[0],))
            conn.execute("DELETE FROM forges WHERE id = ?", (row[0],))
            return True

        if not await self._db.write(delete):
            raise _forge_not_found(id_or_name)

    # --- deliveries ----------------------------------------------------------------------
    async def record_delivery(
        self,
        forge_id: str,
        delivery_id: str,
        look: domain.PendingLook | None = None,
        followup: str | None = None,
    ) -> bool:
        """Remember a webhook delivery: False when it was seen before (drop it, a replay).
        A new one's ``look`` is kept with its issue in the same transaction (``pending``),
        until :meth:`track_issue` says it was made; its ``followup`` (a trigger's JSON) with
        the delivery, until :meth:`followup_decided`.

        Deliveries older than :data:`DELIVERY_RETENTION` are forgotten a batch per insert."""
        if not delivery_id or len(delivery_id) > MAX_DELIVERY_ID:
            raise errors.InvalidInputError(
                f"a delivery id has 1 to {MAX_DELIVERY_ID} characters, not {len(delivery_id)}: "
                "send the forge's delivery header (X-GitHub-Delivery, X-Gitea-Delivery) as is"
            )
        now = models.utcnow()

        prune = (now - DELIVERY_RETENTION, _PRUNE_BATCH)
        return await self._db.write(
            lambda conn: looks.add_delivery(
                conn, (forge_id, delivery_id), now, followup=followup, look=look, prune=prune
            )
        )

    async def pending_followups(self) -> list[tuple[str, str]]:
        """(forge id, trigger JSON) of every follow-up request answered but not yet decided,
        oldest first."""
        return [(str(row[0]), str(row[1])) for row in await self._rows(looks.FOLLOWUPS_PENDING)]

    async def followup_decided(self, forge_id: str, delivery_id: str) -> None:
        """The follow-up kept with ``delivery_id`` was started or turned down: not again."""
        await self._db.write(
            lambda conn: conn.execute(looks.FOLLOWUP_DECIDED, (forge_id, delivery_id)).rowcount
        )

    # --- tracked issues ------------------------------------------------------------------
    async def track_issue(
        self, issue: domain.TrackedIssue, done: str = ""
    ) -> domain.TrackedIssue | None:
        """Record what the forge shows of an issue, and that the look pending for delivery
        ``done`` was made (others stay pending); returns what was recorded before, if any."""
        before: domain.TrackedIssue | None = await self._db.write(
            lambda conn: looks.track(conn, issue, done)
        )
        return before

    async def pending_looks(self) -> list[tuple[str, domain.PendingLook]]:
        """(forge id, look) for every look answered but not made yet, oldest first."""
        rows = await self._rows(looks.PENDING)
        issues = [domain.TrackedIssue.model_validate_json(row[0]) for row in rows]
        return [(i.forge_id, look) for i in issues for look in i.pending]

    async def get_tracked_issue(
        self, forge_id: str, repo: str, number: int
    ) -> domain.TrackedIssue | None:
        row = await self._row(looks.SELECT, (forge_id, repo, number))
        return None if row is None else domain.TrackedIssue.model_validate_json(row[0])

    async def list_tracked_issues(
        self, forge_id: str | None = None, limit: int = 200
    ) -> list[domain.TrackedIssue]:
        """The issues seen, most recently seen first."""
        _check_limit(limit)

        if forge_id is None:
            rows = await self._rows(_ISSUES_ALL, (limit,))
        else:
            rows = await self._rows(_ISSUES_OF_FORGE, (forge_id, limit))
        return [domain.TrackedIssue.model_validate_json(row[0]) for row in rows]

    # --- attempts ------------------------------------------------------------------------
    async def create_attempt(self, attempt: domain.Attempt) -> domain.Attempt:
        """Record a new attempt. ConflictError when the issue already has an active one (and
        the new one is active) or the id is taken."""
        row = (attempt.id, *_attempt_row(attempt))
        await self._db.insert(
            _ATTEMPT_INSERT, row, lambda conn, exc: _attempt_conflict(conn, attempt, exc)
        )
        return attempt

    async def get_attempt(self, attempt_id: str) -> domain.Attempt:
        row = await self._row(f"{_ATTEMPT_SELECT} WHERE id = ?", (attempt_id,))
        if row is None:
            raise _attempt_not_found(attempt_id)
        return domain.Attempt.model_validate_json(row[0])

    async def save_attempt(self, attempt: domain.Attempt) -> domain.Attempt:
        """Replace the attempt with id ``attempt.id``; keeps ``created_at``, sets ``updated_at``.

        NotFoundError for an unknown id; ConflictError when it would make a second active
        attempt at its issue (nothing is saved then)."""
        now = models.utcnow()

        def update(conn: sqlite3.Connection) -> domain.Attempt:
            row = conn.execute(
                "SELECT created_at FROM attempts WHERE id = ?", (attempt.id,)
            ).fetchone()
            if row is None:
                raise _attempt_not_found(attempt.id)
            saved = attempt.model_copy(update={"created_at": load_time(row[0]), "updated_at": now})
            try:
                conn.execute(_ATTEMPT_UPDATE, (*_attempt_row(saved), saved.id))
            except sqlite3.IntegrityError as exc:
                raise _attempt_conflict(conn, saved, exc) from exc
            return saved

        return await self._db.write(update)

    async def list_attempts(
        self,
        *,
        forge_id: str | None = None,
        repo: str | None = None,
        number: int | None = None,
        active: bool | None = None,
        limit: int = 200,
    ) -> list[domain.Attempt]:
        """Newest first; each given argument narrows the list."""
        _check_limit(limit)
        values = (forge_id, repo, number, active)
        given = [(f, v) for f, v in zip(_ATTEMPT_FILTERS, values, strict=True) if v is not None]
        sql = _ATTEMPT_SELECT
        if given:
            sql += " WHERE " + " AND ".join(f for f, _ in given)
        sql += _NEWEST + " LIMIT ?"
        rows = await self._rows(sql, [v for _, v in given] + [limit])
        return [domain.Attempt.model_validate_json(row[0]) for row in rows]

    async def attempt_for_run(self, run_id: str) -> domain.Attempt | None:
        """The attempt that submitted this run (the newest, should two claim it)."""

        row = await self._row(f"{_ATTEMPT_SELECT} WHERE run_id = ?{_NEWEST} LIMIT 1", (run_id,))
        return None if row is None else domain.Attempt.model_validate_json(row[0])

    async def attempts_for_pull(
        self, forge_id: str, repo: str, pr_number: int
    ) -> list[domain.Attempt]:
        """The attempts that opened or followed up on this pull request, newest first."""

        rows = await self._rows(_ATTEMPTS_FOR_PULL, (forge_id, repo, pr_number))
        return [domain.Attempt.model_validate_json(row[0]) for row in rows]

    async def next_seq(self, forge_id: str, repo: str, number: int) -> int:
        """The ``seq`` for the issue's next attempt: one more than the highest so far."""

        return int((await self._row(_NEXT_SEQ, (forge_id, repo, number)))[0])

    async def branch_taken(self, forge_id: str, repo: str, branch: str) -> bool:
        """Whether an attempt in this repository has used this branch (names are never reused)."""

        return await self._row(_BRANCH_TAKEN, (forge_id, repo, branch)) is not None

    # --- flags ---------------------------------------------------------------------------
    async def get_flag(self, name: str) -> str | None:
        row = await self._row("SELECT value FROM flags WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    async def set_flag(self, name: str, value: str | None) -> None:
        """Set a farm-wide flag; None removes it."""
        now = dump_time(models.utcnow())

        def write(conn: sqlite3.Connection) -> None:
            if value is None:
                conn.execute("DELETE FROM flags WHERE name = ?", (name,))
            else:
                conn.execute(_FLAG_UPSERT, (name, value, now))

        await self._db.write(write)

    # --- orchestration dispatches --------------------------------------------------------
    async def get_dispatch(self, caller: str, key: str) -> domain.Dispatch | None:
        row = await self._row(_DISPATCH_SELECT, (caller, key))
        if row is None:
            return None
        return domain.Dispatch(
            key=row[0], caller=row[1], digest=row[2], run_id=row[3], created_at=load_time(row[4])
        )

    async def create_dispatch(self, dispatch: domain.Dispatch) -> domain.Dispatch:
        """Remember a dispatch; ConflictError when its caller already used the key."""
        row = (dispatch.caller, dispatch.key, dispatch.digest, dispatch.run_id,
               dump_time(dispatch.created_at))  # fmt: skip
        used = errors.ConflictError(
            f"the idempotency key {dispatch.key!r} was already used by this caller; "
            "repeat that request as it was, or pick a new key"
        )
        await self._db.insert(_DISPATCH_INSERT, row, lambda _conn, _exc: used)
        return dispatch

    async def delete_dispatch(self, caller: str, key: str) -> None:
        """Forget a dispatch whose run could not be created: the key is free again."""
        sql = "DELETE FROM dispatches WHERE caller = ? AND key = ?"
        await self._db.write(lambda conn: conn.execute(sql, (caller, key)).rowcount)


_DELETE_OF_FORGE = {
    table: f"DELETE FROM {table} WHERE forge_id = ?"  # noqa: S608 (constant table names)
    for table in ("forge_deliveries", "tracked_issues", "attempts")
}


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise errors.InvalidInputError(f"limit must be 0 or more, not {limit}")


def _attempt_row(attempt: domain.Attempt) -> tuple[Any, ...]:
    """The columns after ``id`` of ``_ATTEMPT_COLUMNS``, copied from the model."""
    return (
        attempt.forge_id, attempt.repo, attempt.number, attempt.state.value, attempt.active,
        attempt.run_id, attempt.branch, attempt.pr_number, attempt.model_dump_json(),
        dump_time(attempt.created_at), dump_time(attempt.updated_at),
    )  # fmt: skip


def _attempt_conflict(
    conn: sqlite3.Connection, attempt: domain.Attempt, exc: sqlite3.IntegrityError
) -> errors.ConflictError:
    if "attempts.id" in str(exc):
        return errors.ConflictError(f"an attempt with id {attempt.id} already exists")
    row = conn.execute(_ACTIVE_FOR_ISSUE, (attempt.forge_id, attempt.repo, attempt.number))
    other = row.fetchone()
    return errors.ConflictError(
        f"{attempt.repo}#{attempt.number} already has an active attempt"
        f"{f' ({other[0]})' if other else ''}; wait for it to end or stop it first"
    )


def _attempt_not_found(attempt_id: str) -> errors.NotFoundError:
    return errors.NotFoundError(f"no attempt with id {attempt_id!r}")


def _forge_conflict(forge: domain.Forge, exc: sqlite3.IntegrityError) -> errors.ConflictError:
    if "forges.name" in str(exc):
        return errors.ConflictError(
            f"a forge named {forge.name!r} already exists; pick another name or update that one"
        )
    return errors.ConflictError(f"a forge with id {forge.id} already exists")


def _forge_not_found(id_or_name: str) -> errors.NotFoundError:
    return errors.NotFoundError(f"no forge with id or name {id_or_name!r}")
