"""Fan-out of committed events to any number of viewers.

One ingest task per run writes events; viewers never touch the agent. Each run keeps a
bounded in-memory tail, so viewers that are caught up read from memory; a viewer further
behind (a reconnect with an old Last-Event-ID, a "load older") reads the store.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from agentfarm.domain import models
from agentfarm.store import Store

TAIL = 2000


@dataclass
class _Channel:
    tail: deque[models.Event] = field(default_factory=lambda: deque(maxlen=TAIL))
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    last_seq: int = 0
    closed: bool = False


class Hub:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._channels: dict[str, _Channel] = {}

    def _channel(self, run_id: str) -> _Channel:
        channel = self._channels.get(run_id)
        if channel is None:
            channel = self._channels[run_id] = _Channel()
        return channel

    async def publish(
        self, run_id: str, events: Sequence[models.Event], *, final: bool = False
    ) -> None:
        channel = self._channel(run_id)
        async with channel.changed:
            for event in events:
                if event.seq > channel.last_seq:
                    channel.tail.append(event)
                    channel.last_seq = event.seq
            channel.closed = channel.closed or final
            channel.changed.notify_all()

    def forget(self, run_id: str) -> None:
        channel = self._channels.get(run_id)
        if channel is not None and channel.closed:
            del self._channels[run_id]

    async def _read(self, run_id: str, after: int, limit: int) -> list[models.Event]:
        channel = self._channels.get(run_id)
        if channel is not None and channel.tail and channel.tail[0].seq <= after + 1:
            return [e for e in channel.tail if e.seq > after][:limit]
        return await self._store.list_events(run_id, after=after, limit=limit)

    async def follow(
        self, run_id: str, after: int = 0, *, batch: int = 500
    ) -> AsyncIterator[list[models.Event]]:
        """Batches of events with seq > ``after``, live, ending after the run's terminal event."""
        while True:
            channel = self._channel(run_id)
            events = await self._read(run_id, after, batch)
            if events:
                after = events[-1].seq
                yield events
                if _is_terminal(events[-1]):
                    return
                continue
            run = await self._store.get_run(run_id)
            if run.status.terminal and after >= await self._store.last_seq(run_id):
                return
            async with channel.changed:
                if channel.last_seq <= after and not channel.closed:
                    await channel.changed.wait()


def _is_terminal(event: models.Event) -> bool:
    if event.type != models.EventType.run_status:
        return False
    try:
        return models.RunStatus(event.data.get("status", "")).terminal
    except ValueError:
        return False
