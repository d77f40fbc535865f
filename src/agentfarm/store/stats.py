"""Figures over the runs table: the queue's length and what runs cost (spend), on the store's
database.

Spend is summed from runs' ``cost_usd``. A run counts on the day (UTC) it finished; a run not
yet finished counts now, so a long run's cost lands in the period it is spending in.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agentfarm.domain import errors, models
from agentfarm.store import db, mapping
from agentfarm.store.mapping import dump_time

#: The run's origin inside the spec column's JSON (``mapping.RUN_IN_SPEC``).
_ORIGIN = "COALESCE(json_extract(spec, '$._run.origin'), 'person')"
#: The forge a pipeline run worked for: the pipeline's attempt that names the run (runs carry
#: no forge themselves); NULL for every other run.
_FORGE = (
    "(SELECT COALESCE(f.name, '(removed forge)') FROM attempts a"
    " LEFT JOIN forges f ON f.id = a.forge_id WHERE a.run_id = runs.id LIMIT 1)"
)


@dataclass(frozen=True, slots=True)
class DaySpend:
    """What runs of one config (None: one-off runs), origin and forge (None: not a pipeline
    run) cost on one UTC day."""

    day: str  # YYYY-MM-DD
    config_name: str | None
    origin: str
    cost_usd: float
    runs: int
    forge: str | None = None


class RunStats:
    """``RunStats(store.database)``."""

    def __init__(self, database: db.Database) -> None:
        self._db = database

    async def create_queued(self, run: models.Run, *, limit: int) -> int | None:
        """Insert the queued ``run`` unless ``limit`` runs already wait: the count and the
        insert in one transaction, so that launches racing each other cannot overfill the
        queue. Returns None when inserted, else how many wait."""
        row = mapping.run_to_row(run)
        columns = ", ".join(mapping.RUN_COLUMNS)
        sql = f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' * len(row))})"  # noqa: S608

        def insert(conn: sqlite3.Connection) -> int | None:
            count = int(
                conn.execute(
                    "SELECT COUNT(*) FROM runs WHERE status = ?", (models.RunStatus.queued.value,)
                ).fetchone()[0]
            )
            if count >= limit:
                return count
            try:
                conn.execute(sql, row)
            except sqlite3.IntegrityError as exc:
                raise errors.ConflictError(f"a run with id {run.id} already exists") from exc
            return None

        return await self._db.write(insert)

    async def queued_count(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(*) FROM runs WHERE status = ?", (models.RunStatus.queued.value,)
            ).fetchone()
            return int(row[0])

        return await self._db.read(count)

    async def spent(self, *, since: datetime, config_id: str | None = None) -> float:
        """US dollars spent by runs that finished at or after ``since`` or have not finished
        (of one config, when ``config_id`` is given)."""
        sql = (
            "SELECT COALESCE(SUM(cost_usd), 0) FROM runs WHERE cost_usd IS NOT NULL"
            " AND (finished_at IS NULL OR finished_at >= ?)"
        )
        params: list[Any] = [dump_time(since)]
        if config_id is not None:
            sql += " AND config_id = ?"
            params.append(config_id)

        def total(conn: sqlite3.Connection) -> float:
            return float(conn.execute(sql, params).fetchone()[0])

        return await self._db.read(total)

    async def spent_by_config(self, *, since: datetime) -> dict[str, float]:
        """Like :meth:`spent`, per config id (one-off runs left out)."""
        sql = (
            "SELECT config_id, SUM(cost_usd) FROM runs WHERE cost_usd IS NOT NULL"
            " AND config_id IS NOT NULL AND (finished_at IS NULL OR finished_at >= ?)"
            " GROUP BY config_id"
        )

        def totals(conn: sqlite3.Connection) -> dict[str, float]:
            return {str(k): float(v) for k, v in conn.execute(sql, (dump_time(since),))}

        return await self._db.read(totals)

    async def by_day(self, *, since: datetime, now: datetime) -> list[DaySpend]:
        """Spend per UTC day, config, origin and forge, from ``since`` (a run not yet finished
        counts on ``now``'s day), oldest day first."""
        day = "substr(COALESCE(finished_at, ?1), 1, 10)"
        sql = (
            f"SELECT {day} AS day, config_name, {_ORIGIN} AS origin, {_FORGE} AS forge,"  # noqa: S608 (constants)
            " SUM(cost_usd), COUNT(*)"
            " FROM runs WHERE cost_usd IS NOT NULL AND (finished_at IS NULL OR finished_at >= ?2)"
            " GROUP BY day, config_name, origin, forge ORDER BY day, config_name"
        )

        def rows(conn: sqlite3.Connection) -> list[DaySpend]:
            found = conn.execute(sql, (dump_time(now), dump_time(since)))
            return [DaySpend(str(d), c, str(o), float(s), int(n), f) for d, c, o, f, s, n in found]

        return await self._db.read(rows)
