"""The store: configs, runs and their events in one SQLite file.

An async facade over ``db.Database`` (one writer thread, a pool of readers) with the
row <-> model mapping of ``mapping``. ``append_events`` writes events, the backend cursor and
run fields in one transaction: that atomicity is what makes ingestion exactly-once across
restarts.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agentfarm.domain import errors, models
from agentfarm.store import db, mapping, schema, transitions
from agentfarm.store.transitions import NEXT_STATUSES as NEXT_STATUSES
from agentfarm.store.transitions import REOPEN as REOPEN

_RUN_SELECT = f"SELECT {', '.join(mapping.RUN_COLUMNS)} FROM runs"  # noqa: S608 (constants)
_CONFIG_SELECT = f"SELECT {', '.join(mapping.CONFIG_COLUMNS)} FROM configs"  # noqa: S608
_EVENT_SELECT = f"SELECT {', '.join(mapping.EVENT_COLUMNS)} FROM events"  # noqa: S608
# A name may look like another config's id: an id match wins.
_CONFIG_BY_ID_OR_NAME = "WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
_CONFIG_DELETE = f"DELETE FROM configs WHERE id = (SELECT id FROM configs {_CONFIG_BY_ID_OR_NAME})"  # noqa: S608
_CONFIG_INSERT = f"INSERT INTO configs ({', '.join(mapping.CONFIG_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"  # noqa: S608
_ACTIVE = tuple(s.value for s in models.RunStatus if s in models.ACTIVE_STATUSES)
_TERMINAL = tuple(s.value for s in models.RunStatus if s in models.TERMINAL_STATUSES)


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise errors.InvalidInputError(f"limit must be 0 or more, not {limit}")


class Store:
    """Use ``await Store.open(path)``; ``await store.close()`` when done."""

    def __init__(self, database: db.Database) -> None:
        self._db = database

    @classmethod
    async def open(cls, path: Path, *, readers: int = db.DEFAULT_READERS) -> Store:
        """Open (creating the file and its directories) and migrate the database at ``path``."""
        path = Path(path)
        database = await db.Database.open(path, readers=readers)  # creates the file, WAL on
        try:
            await asyncio.to_thread(schema.migrate, path)
        except BaseException:
            await database.close()
            raise
        return cls(database)

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def database(self) -> db.Database:
        """The underlying database, for the store's sibling modules (``users``)."""
        return self._db

    async def close(self) -> None:
        await self._db.close()

    # Configs

    async def create_config(self, cfg: models.AgentConfig) -> models.AgentConfig:
        row = mapping.config_to_row(cfg)
        await self._db.insert(_CONFIG_INSERT, row, lambda _, exc: _config_conflict(cfg, exc))
        return cfg

    async def get_config(self, id_or_name: str) -> models.AgentConfig:
        def select(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                f"{_CONFIG_SELECT} {_CONFIG_BY_ID_OR_NAME}", (id_or_name,)
            ).fetchone()

        row = await self._db.read(select)
        if row is None:
            raise _config_not_found(id_or_name)
        return mapping.row_to_config(row)

    async def list_configs(self) -> list[models.AgentConfig]:
        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(f"{_CONFIG_SELECT} ORDER BY name").fetchall()

        return [mapping.row_to_config(row) for row in await self._db.read(select)]

    async def update_config(self, cfg: models.AgentConfig) -> models.AgentConfig:
        """Replace the config with id ``cfg.id``; keeps ``created_at``, sets ``updated_at``."""
        now = models.utcnow()
        spec = mapping.config_spec_json(cfg)

        def update(conn: sqlite3.Connection) -> str:
            found = conn.execute("SELECT created_at FROM configs WHERE id = ?", (cfg.id,))
            row = found.fetchone()
            if row is None:
                raise _config_not_found(cfg.id)
            try:
                conn.execute(
                    "UPDATE configs SET name = ?, spec = ?, updated_at = ? WHERE id = ?",
                    (cfg.name, spec, mapping.dump_time(now), cfg.id),
                )
            except sqlite3.IntegrityError as exc:
                raise _config_conflict(cfg, exc) from exc
            return str(row[0])

        created_at = mapping.load_time(await self._db.write(update))
        return cfg.model_copy(update={"created_at": created_at, "updated_at": now})

    async def delete_config(self, id_or_name: str) -> None:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute(_CONFIG_DELETE, (id_or_name,)).rowcount

        if await self._db.write(delete) == 0:
            raise _config_not_found(id_or_name)

    # Runs

    async def create_run(self, run: models.Run) -> models.Run:
        row = mapping.run_to_row(run)
        placeholders = ", ".join("?" * len(row))
        sql = f"INSERT INTO runs ({', '.join(mapping.RUN_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
        taken = errors.ConflictError(f"a run with id {run.id} already exists")
        await self._db.insert(sql, row, lambda _conn, _exc: taken)
        return run

    async def get_run(self, run_id: str) -> models.Run:
        def select(conn: sqlite3.Connection) -> Any:
            return conn.execute(f"{_RUN_SELECT} WHERE id = ?", (run_id,)).fetchone()

        row = await self._db.read(select)
        if row is None:
            raise transitions.run_not_found(run_id)
        return mapping.row_to_run(row)

    async def list_runs(
        self,
        *,
        statuses: Collection[models.RunStatus] | None = None,
        config: str | None = None,
        limit: int = 100,
        before: datetime | None = None,
    ) -> list[models.Run]:
        """Newest first. ``config`` matches a config id or name; ``before`` pages by
        ``created_at`` (pass the last run's ``created_at`` to get the next page)."""
        _check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        if statuses is not None:
            try:
                values = sorted({models.RunStatus(s).value for s in statuses})
            except ValueError as exc:
                raise errors.InvalidInputError(f"unknown run status: {exc}") from exc
            if not values:
                return []
            where.append(f"status IN ({', '.join('?' * len(values))})")
            params.extend(values)
        if config is not None:
            where.append("(config_id = ? OR config_name = ?)")
            params.extend((config, config))
        if before is not None:
            where.append("created_at < ?")
            params.append(mapping.dump_time(before))
        sql = _RUN_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit)

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        return [mapping.row_to_run(row) for row in await self._db.read(select)]

    async def update_run(self, run_id: str, **fields: Any) -> models.Run:
        """Set any ``Run`` fields but ``id``; values are validated as the model would.
        Unknown fields or invalid values raise ``InvalidInputError``; a status change that
        ``NEXT_STATUSES`` does not allow from the stored status raises ``StatusConflictError``."""
        mapping.check_run_fields(fields)
        return await self._db.write(lambda conn: transitions.update_run(conn, run_id, fields))

    async def active_runs(self) -> list[models.Run]:
        """Runs queued, starting or running, oldest first."""
        sql = (
            f"{_RUN_SELECT} WHERE status IN ({', '.join('?' * len(_ACTIVE))})"
            " ORDER BY created_at, id"
        )

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, _ACTIVE).fetchall()

        return [mapping.row_to_run(row) for row in await self._db.read(select)]

    async def runs_with_files(self, *, finished_before: datetime) -> list[models.Run]:
        """Ended runs that finished before ``finished_before`` and still have a workspace
        recorded (retention clears it when it removes their files), oldest first."""
        sql = (
            f"{_RUN_SELECT} WHERE status IN ({', '.join('?' * len(_TERMINAL))})"
            " AND finished_at < ? AND workspace IS NOT NULL ORDER BY finished_at, id"
        )
        params = (*_TERMINAL, mapping.dump_time(finished_before))

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        return [mapping.row_to_run(row) for row in await self._db.read(select)]

    async def delete_run(self, run_id: str) -> None:
        """Delete an ended run with its events, in one transaction. An unknown run is
        ``NotFoundError``; a run still queued, starting or running is ``ConflictError``."""

        def delete(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise transitions.run_not_found(run_id)
            if row[0] not in _TERMINAL:
                raise errors.ConflictError(
                    f"run {run_id} is {row[0]}: stop it first (`agentfarm stop {run_id}`), "
                    "then delete it once it has ended"
                )
            conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))

        await self._db.write(delete)

    # Events

    async def append_events(
        self,
        run_id: str,
        drafts: Sequence[models.EventDraft],
        *,
        cursor: int | None = None,
        run_fields: Mapping[str, Any] | None = None,
    ) -> tuple[list[models.Event], models.Run | None]:
        """In ONE transaction: number the drafts last_seq+1, ..., insert them, save the backend
        ``cursor`` for the run (if given) and update ``run_fields`` (if given; the updated run is
        returned, else None). Either all of it is stored or none of it."""
        if cursor is not None and (isinstance(cursor, bool) or cursor < 0):
            raise errors.InvalidInputError(f"cursor must be an integer >= 0, not {cursor!r}")
        if run_fields is not None:
            mapping.check_run_fields(run_fields)
        values = [mapping.draft_to_values(d) for d in drafts]

        def append(conn: sqlite3.Connection) -> tuple[int, models.Run | None]:
            row = conn.execute(
                "SELECT (SELECT MAX(seq) FROM events WHERE run_id = ?1) FROM runs WHERE id = ?1",
                (run_id,),
            ).fetchone()
            if row is None:
                raise transitions.run_not_found(run_id)
            last: int = row[0] or 0
            if values:
                conn.executemany(
                    "INSERT INTO events (run_id, seq, type, ts, data) VALUES (?, ?, ?, ?, ?)",
                    [(run_id, last + i, *v) for i, v in enumerate(values, 1)],
                )
            if cursor is not None:
                conn.execute("UPDATE runs SET ingest_cursor = ? WHERE id = ?", (cursor, run_id))
            run = (
                transitions.update_run(conn, run_id, run_fields) if run_fields is not None else None
            )
            return last, run

        last, run = await self._db.write(append)
        events = [
            models.Event(
                run_id=run_id, seq=last + i, type=d.type, data=d.data, ts=d.ts
            ).with_data_json(v[2])
            for i, (d, v) in enumerate(zip(drafts, values, strict=True), 1)
        ]
        return events, run

    async def list_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[models.Event]:
        """Events with ``seq > after``, ascending, at most ``limit``."""
        _check_limit(limit)

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"{_EVENT_SELECT} WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (run_id, after, limit),
            ).fetchall()

        return [mapping.row_to_event(row) for row in await self._db.read(select)]

    async def list_events_before(
        self, run_id: str, *, before: int, limit: int = 200
    ) -> list[models.Event]:
        """The ``limit`` events just before seq ``before``, ascending ("load older")."""
        _check_limit(limit)

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"{_EVENT_SELECT} WHERE run_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (run_id, before, limit),
            ).fetchall()

        return [mapping.row_to_event(row) for row in reversed(await self._db.read(select))]

    async def last_seq(self, run_id: str) -> int:
        """The highest seq of the run's events; 0 if it has none (or does not exist)."""
        return await self._scalar("SELECT MAX(seq) FROM events WHERE run_id = ?", run_id)

    async def get_cursor(self, run_id: str) -> int:
        """The backend cursor saved with the run's events; 0 if none (or no such run)."""
        return await self._scalar("SELECT ingest_cursor FROM runs WHERE id = ?", run_id)

    async def count_events(self, run_id: str) -> int:
        return await self._scalar("SELECT COUNT(*) FROM events WHERE run_id = ?", run_id)

    async def _scalar(self, sql: str, *params: Any) -> int:
        def select(conn: sqlite3.Connection) -> int:
            row = conn.execute(sql, params).fetchone()
            return int(row[0]) if row is not None and row[0] is not None else 0

        return await self._db.read(select)


def _config_conflict(cfg: models.AgentConfig, exc: sqlite3.IntegrityError) -> errors.ConflictError:
    if "configs.name" in str(exc):
        return errors.ConflictError(
            f"a config named {cfg.name!r} already exists; pick another name or update that one"
        )
    return errors.ConflictError(f"a config with id {cfg.id} already exists")


def _config_not_found(id_or_name: str) -> errors.NotFoundError:
    return errors.NotFoundError(f"no config with id or name {id_or_name!r}")
