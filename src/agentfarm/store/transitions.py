"""A run's status changes, checked and written as one compare-and-set on the writer thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import pydantic

from agentfarm.domain import errors, models
from agentfarm.store import mapping

RUN_SELECT = f"SELECT {', '.join(mapping.RUN_COLUMNS)} FROM runs"  # noqa: S608 (constants)
_S = models.RunStatus
#: The status changes a run may make. The check and the write happen in one transaction on the
#: single writer thread, so it is a compare-and-set: a run leaves ``queued`` only while it is
#: still queued (two launchers cannot both take it), and nothing leaves a terminal status (not
#: even for the same one again) unless ``REOPEN`` says so.
NEXT_STATUSES: Mapping[models.RunStatus, frozenset[models.RunStatus]] = {
    _S.queued: frozenset({_S.starting, _S.running}) | models.TERMINAL_STATUSES,
    _S.starting: frozenset({_S.running}) | models.TERMINAL_STATUSES,
    _S.running: frozenset({_S.running, _S.parked}) | models.TERMINAL_STATUSES,
    # A parked run resumes (a new agent process: starting) or ends without one.
    _S.parked: frozenset({_S.parked, _S.starting}) | models.TERMINAL_STATUSES,
    **{status: frozenset() for status in models.TERMINAL_STATUSES},
}
#: Not a run field: given with the fields, it lets an ended run (``CONTINUABLE_STATUSES``) go
#: back to ``starting``, once (the compare-and-set holds): a person continues it with a new
#: prompt (supervisor/continuing.py). Without it nothing leaves a terminal status.
REOPEN = mapping.REOPEN


def update_run(conn: sqlite3.Connection, run_id: str, fields: Mapping[str, Any]) -> models.Run:
    """Validate ``fields`` against the current run and write them; runs on the writer thread."""
    fields = dict(fields)
    reopen = bool(fields.pop(REOPEN, False))
    row = conn.execute(f"{RUN_SELECT} WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise run_not_found(run_id)
    current = mapping.row_to_run(row)
    if not fields:
        return current
    try:
        # The fields as they are (not a dump, which leaves out internal ones).
        run = models.Run.model_validate({**dict(current), **fields})
    except pydantic.ValidationError as exc:
        raise errors.InvalidInputError(f"invalid run fields for run {run_id}: {exc}") from exc
    allowed = NEXT_STATUSES[current.status]
    if reopen and current.status in models.CONTINUABLE_STATUSES:
        allowed = frozenset({_S.starting})
    if "status" in fields and run.status not in allowed:
        raise errors.StatusConflictError(
            f"run {run_id} is {current.status.value}; it cannot become {run.status.value}",
            current=current.status.value,
        )
    pairs = mapping.run_assignments(run, sorted(fields))
    assignments = ", ".join(f"{column} = ?" for column, _ in pairs)
    updated = conn.execute(
        # The status in the WHERE clause makes the compare-and-set explicit in SQL as well.
        f"UPDATE runs SET {assignments} WHERE id = ? AND status = ?",  # noqa: S608 (checked names)
        [*(value for _, value in pairs), run_id, current.status.value],
    ).rowcount
    if updated != 1:  # pragma: no cover - the writer thread is the only writer
        raise errors.StatusConflictError(
            f"run {run_id} changed while it was being updated; try again",
            current=current.status.value,
        )
    # Read back, so the caller gets what is stored (datetimes in UTC, naive ones made aware).
    return mapping.row_to_run(conn.execute(f"{RUN_SELECT} WHERE id = ?", (run_id,)).fetchone())


def run_not_found(run_id: str) -> errors.NotFoundError:
    return errors.NotFoundError(f"no run with id {run_id!r}")
