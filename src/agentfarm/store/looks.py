"""Webhook deliveries, tracked issues and the looks pending for them, on the writer thread.

A label delivery is answered only once the look it asks for is stored with its issue
(``TrackedIssue.pending``, in the issue's JSON, in the same transaction as the delivery's id):
a control plane killed before making the look makes it after its restart, since the forge never
sends a delivery it had an answer to again. Recording what the forge showed of the issue after
the look drops that look and keeps the others. A pull-request comment asking for a follow-up
is kept the same way, with its delivery (``followup``), until the follow-up was decided.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from agentfarm.domain import pipeline as domain
from agentfarm.store.mapping import dump_time

KEY = "forge_id = ? AND repo = ? AND number = ?"
SELECT = f"SELECT data FROM tracked_issues WHERE {KEY}"  # noqa: S608 (constants)
UPSERT = (
    "INSERT INTO tracked_issues (forge_id, repo, number, data, seen_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (forge_id, repo, number) DO UPDATE SET data = excluded.data, "
    "seen_at = excluded.seen_at"
)
PENDING = (
    "SELECT data FROM tracked_issues WHERE json_array_length(data, '$.pending') > 0 "
    "ORDER BY seen_at, rowid"
)

DELIVERY_INSERT = (
    "INSERT OR IGNORE INTO forge_deliveries (forge_id, delivery_id, received_at, followup) "
    "VALUES (?, ?, ?, ?)"
)
FOLLOWUPS_PENDING = (
    "SELECT forge_id, followup FROM forge_deliveries WHERE followup IS NOT NULL "
    "ORDER BY received_at, rowid"
)
FOLLOWUP_DECIDED = (
    "UPDATE forge_deliveries SET followup = NULL WHERE forge_id = ? AND delivery_id = ?"
)
DELIVERY_PRUNE = (
    "DELETE FROM forge_deliveries WHERE rowid IN (SELECT rowid FROM forge_deliveries "
    "WHERE received_at < ? ORDER BY received_at LIMIT ?)"
)


def get(conn: sqlite3.Connection, key: tuple[str, str, int]) -> domain.TrackedIssue | None:
    row = conn.execute(SELECT, key).fetchone()
    return None if row is None else domain.TrackedIssue.model_validate_json(row[0])


def add_delivery(
    conn: sqlite3.Connection,
    key: tuple[str, str],
    now: datetime,
    *,
    followup: str | None,
    look: domain.PendingLook | None,
    prune: tuple[datetime, int],
) -> bool:
    """Insert a delivery (forge id, delivery id) with its ``followup``: False when it was
    there already. A new one prunes a batch of those received before ``prune[0]`` and keeps
    its ``look`` pending with its issue."""
    inserted = conn.execute(DELIVERY_INSERT, (*key, dump_time(now), followup))
    if not inserted.rowcount:
        return False
    conn.execute(DELIVERY_PRUNE, (dump_time(prune[0]), prune[1]))
    if look is not None:
        add_pending(conn, key[0], look, now)
    return True


def add_pending(
    conn: sqlite3.Connection, forge_id: str, look: domain.PendingLook, now: datetime
) -> None:
    key = (forge_id, look.repo, look.number)
    issue = get(conn, key) or domain.TrackedIssue(
        forge_id=forge_id, repo=look.repo, number=look.number, seen_at=now
    )
    issue.pending.append(look)
    conn.execute(UPSERT, (*key, issue.model_dump_json(), dump_time(issue.seen_at)))


def track(
    conn: sqlite3.Connection, issue: domain.TrackedIssue, done: str
) -> domain.TrackedIssue | None:
    """Record ``issue`` with the looks still pending but ``done``'s; what was there before."""
    key = (issue.forge_id, issue.repo, issue.number)
    before = get(conn, key)
    kept = [p for p in before.pending if p.delivery_id != done] if before else []
    data = issue.model_copy(update={"pending": kept}).model_dump_json()
    conn.execute(UPSERT, (*key, data, dump_time(issue.seen_at)))
    return before
