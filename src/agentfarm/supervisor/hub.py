"""Fan-out of committed events to any number of viewers.

One ingest task per run writes events; viewers never touch the agent. Each run keeps an
in-memory tail bounded in bytes, so viewers that are caught up read from memory; a viewer
further behind (a reconnect with an old Last-Event-ID, a "load older") reads the store.

A run's channel lives while its run is ingested or someone follows it: it goes once the run
has ended (its terminal event published, or the run found finished in the store) and its last
follower has left, so viewing old runs leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from agentfarm.domain import models
from agentfarm.store import Store

#: Bytes of events a run's tail holds at most (about; see ``event_size``).
TAIL_BYTES = 4 << 20
#: Bytes all runs' tails hold together: with many runs each gets its share of this (never
#: less than ``TAIL_FLOOR``), so 500 runs hold about as much as 16 (issue 12).
TAIL_TOTAL_BYTES = 64 << 20
#: What a run's tail may keep whatever the number of runs: its newest batches.
TAIL_FLOOR = 64 << 10
#: What an event costs in memory besides its data's JSON: the model, its dicts, the deque
#: entry (measured with tracemalloc: 830-1340 bytes, more for more nested data).
EVENT_OVERHEAD = 1024
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def event_size(event: models.Event) -> int:
    """An estimate of the memory an event holds: its data as compact JSON, plus overhead."""
    return EVENT_OVERHEAD + len(_ENCODER.encode(event.data))


@dataclass
class _Channel:
    tail: deque[tuple[models.Event, int]] = field(default_factory=deque)
    tail_bytes: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    last_seq: int = 0
    closed: bool = False
    followers: int = 0


class Hub:
    def __init__(
        self, store: Store, *, tail_bytes: int = TAIL_BYTES, total_bytes: int = TAIL_TOTAL_BYTES
    ) -> None:
        self._store = store
        self._tail_bytes = tail_bytes
        self._total_bytes = total_bytes
        #: What every tail holds together (the sum of their ``tail_bytes``).
        self._held = 0
        self._channels: dict[str, _Channel] = {}

    def _cap(self) -> int:
        """What one run's tail may hold now: its share of the total, within its bounds."""
        share = self._total_bytes // max(1, len(self._channels))
        return max(min(self._tail_bytes, share), min(TAIL_FLOOR, self._tail_bytes))

    def _trim(self, channel: _Channel, cap: int) -> None:
        while channel.tail_bytes > cap:
            _, size = channel.tail.popleft()
            channel.tail_bytes -= size
            self._held -= size

    def _drop(self, run_id: str) -> None:
        channel = self._channels.pop(run_id)
        self._held -= channel.tail_bytes

    def _channel(self, run_id: str) -> _Channel:
        channel = self._channels.get(run_id)
        if channel is None:
            channel = self._channels[run_id] = _Channel()
        return channel

    def tail_bytes(self, run_id: str) -> int:
        channel = self._channels.get(run_id)
        return channel.tail_bytes if channel is not None else 0

    async def publish(
        self, run_id: str, events: Sequence[models.Event], *, final: bool = False
    ) -> None:
        channel = self._channel(run_id)
        async with channel.changed:
            for event in events:
                if event.seq > channel.last_seq:
                    size = event_size(event)
                    channel.tail.append((event, size))
                    channel.tail_bytes += size
                    self._held += size
                    channel.last_seq = event.seq
            cap = self._cap()
            self._trim(channel, cap)
            if self._held > self._total_bytes:  # more runs than when the others were trimmed
                for other in self._channels.values():
                    self._trim(other, cap)
            channel.closed = channel.closed or final
            channel.changed.notify_all()

    def forget(self, run_id: str) -> None:
        """The run has ended: drop its channel now, or when its last follower leaves."""
        channel = self._channels.get(run_id)
        if channel is not None and channel.closed and channel.followers == 0:
            self._drop(run_id)

    def _leave(self, run_id: str, channel: _Channel, *, ended: bool) -> None:
        channel.followers -= 1
        channel.closed = channel.closed or ended
        # A channel nobody published to holds nothing: an ingest task would make a new one.
        idle = channel.last_seq == 0
        current = self._channels.get(run_id) is channel
        if current and channel.followers == 0 and (channel.closed or idle):
            self._drop(run_id)

    async def _read(
        self, run_id: str, channel: _Channel, after: int, limit: int
    ) -> list[models.Event]:
        tail = channel.tail
        if tail and tail[0][0].seq <= after + 1:
            return [e for e, _ in tail if e.seq > after][:limit]
        return await self._store.list_events(run_id, after=after, limit=limit)

    async def follow(
        self, run_id: str, after: int = 0, *, batch: int = 500
    ) -> AsyncIterator[list[models.Event]]:
        """Batches of events with seq > ``after``, live, ending after the run's terminal event."""
        channel = self._channel(run_id)
        channel.followers += 1
        ended = False
        try:
            while True:
                events = await self._read(run_id, channel, after, batch)
                if events:
                    after = events[-1].seq
                    if _is_terminal(events[-1]):
                        ended = True
                    yield events
                    if ended:
                        return
                    continue
                run = await self._store.get_run(run_id)
                if run.status.terminal and after >= await self._store.last_seq(run_id):
                    ended = True
                    return
                async with channel.changed:
                    if channel.last_seq <= after and not channel.closed:
                        await channel.changed.wait()
        finally:
            self._leave(run_id, channel, ended=ended)


def _is_terminal(event: models.Event) -> bool:
    if event.type != models.EventType.run_status:
        return False
    try:
        return models.RunStatus(event.data.get("status", "")).terminal
    except ValueError:
        return False
