"""Web Push subscriptions on the store's database: where to push, and who subscribed.

A subscription's keys are not secrets of ours (the browser gave them to be used), but its
endpoint is a capability URL at the push service: it stays in this table and the push sender.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime

from agentfarm.domain import errors, models
from agentfarm.store import db
from agentfarm.store.mapping import dump_time, load_time

#: A farm has a few people with a phone or two each; more is a mistake or abuse.
MAX_SUBSCRIPTIONS = 200

_UPSERT = (
    "INSERT INTO push_subscriptions (endpoint, p256dh, auth, owner, created_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET p256dh = excluded.p256dh, "
    "auth = excluded.auth, owner = excluded.owner"
)
_SELECT = "SELECT endpoint, p256dh, auth, owner, created_at FROM push_subscriptions"


@dataclass(frozen=True)
class Subscription:
    endpoint: str
    p256dh: str
    auth: str
    owner: str
    created_at: datetime = field(default_factory=models.utcnow)

    def info(self) -> dict[str, object]:
        """The shape the Web Push libraries (and the browser's ``toJSON()``) use."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


class PushSubscriptions:
    """``PushSubscriptions(store.database)``."""

    def __init__(self, database: db.Database) -> None:
        self._db = database

    async def add(self, sub: Subscription) -> Subscription:
        """Store ``sub`` (the same endpoint again replaces its keys and owner)."""
        row = (sub.endpoint, sub.p256dh, sub.auth, sub.owner, dump_time(sub.created_at))

        def upsert(conn: sqlite3.Connection) -> None:
            known = conn.execute(
                "SELECT 1 FROM push_subscriptions WHERE endpoint = ?", (sub.endpoint,)
            ).fetchone()
            count = conn.execute("SELECT COUNT(*) FROM push_subscriptions").fetchone()[0]
            if known is None and count >= MAX_SUBSCRIPTIONS:
                raise errors.ConflictError(
                    f"this server already has {count} push subscriptions, the most it keeps: "
                    "unsubscribe browsers that are no longer used (on their settings page)"
                )
            conn.execute(_UPSERT, row)

        await self._db.write(upsert)
        return sub

    async def remove(self, endpoint: str, owner: str | None = None) -> bool:
        """Remove a subscription (only ``owner``'s, when given); False if there was none."""

        def delete(conn: sqlite3.Connection) -> bool:
            if owner is None:
                cur = conn.execute("DELETE FROM push_subscriptions WHERE endpoint = ?", (endpoint,))
            else:
                cur = conn.execute(
                    "DELETE FROM push_subscriptions WHERE endpoint = ? AND owner = ?",
                    (endpoint, owner),
                )
            return cur.rowcount > 0

        removed: bool = await self._db.write(delete)
        return removed

    async def list(self, owner: str | None = None) -> list[Subscription]:
        def select(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, str]]:
            if owner is None:
                return conn.execute(f"{_SELECT} ORDER BY created_at").fetchall()
            return conn.execute(
                f"{_SELECT} WHERE owner = ? ORDER BY created_at", (owner,)
            ).fetchall()

        rows = await self._db.read(select)
        return [Subscription(e, p, a, o, load_time(c)) for e, p, a, o, c in rows]
