"""Fan-out of committed events to any number of viewers.

One ingest task per run writes events; viewers never touch the agent. Each run keeps an
in-memory tail bounded in bytes, so viewers that are caught up read from memory; a viewer
further behind (a reconnect with an old Last-Event-ID, a "load older") reads the store.

Each follower is a cursor (the last seq it has) into the run's shared tail: a caught-up
follower reads only what is new, from the tail's end. Waking is cheap for many followers:
each waits on a future of its own, and wake-ups are batched: the channels published to within
``WAKE_BATCH`` (one loop iteration) are woken together, each follower once, with no lock to
take in turn.
A follower asks the store whether its run has ended only when it starts, when the channel
says the run ended, and after an idle period, never once per event.

A run's channel lives while its run is ingested or someone follows it: it goes once the run
has ended (its terminal event published, or the run found finished in the store) and its last
follower has left, so viewing old runs leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from agentfarm.domain import models
from agentfarm.store import Store
from agentfarm.supervisor import runfeed

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
#: Seconds a publish waits before waking followers, so that the runs' events published
#: meanwhile go out together (0: at the next loop iteration, which already gathers the
#: publishes of one iteration). 20 ms saved about 9 % of the CPU of 200 viewers in
#: bench/cockpit.py, within its noise, for 20 ms more delay on every event: not worth it.
WAKE_BATCH = 0.0


def event_size(event: models.Event) -> int:
    """An estimate of the memory an event holds: its data, about as large as its compact JSON,
    that JSON itself (kept with the event to be served: ``EventDraft.data_json``), plus
    overhead (tracemalloc, a 130-byte text event: 1,460 bytes without its JSON, 1,780 with)."""
    return EVENT_OVERHEAD + 2 * len(event.data_json())


@dataclass(eq=False)  # hashed by identity (the channels to wake)
class _Channel:
    tail: deque[tuple[models.Event, int]] = field(default_factory=deque)
    tail_bytes: int = 0
    #: Followers waiting for news, each on its own future (removed when it stops waiting).
    waiters: set[asyncio.Future[bool]] = field(default_factory=set)
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
        self._closing = False
        #: Farm-wide: each run created, changed or deleted (the dashboard's live list).
        self.runs = runfeed.RunFeed()
        #: Channels published to since the last wake-up, woken together (``WAKE_BATCH``).
        self._pending: set[_Channel] = set()
        self._waking: asyncio.TimerHandle | asyncio.Handle | None = None
        #: Waiting followers that asked for heartbeats, with when their wait times out: one
        #: timer for all of them (``_sweep``), not one per wait.
        self._idle: dict[asyncio.Future[bool], float] = {}
        self._sweeping: asyncio.TimerHandle | None = None

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

    @property
    def closing(self) -> bool:
        """The server is shutting down: followers have been let go (their runs go on)."""
        return self._closing

    def close(self) -> None:
        """Let every follower go now (a server shutting down): ``follow`` returns."""
        self._closing = True
        self.runs.close()
        for channel in self._channels.values():
            self._wake(channel)

    async def publish(
        self, run_id: str, events: Sequence[models.Event], *, final: bool = False
    ) -> None:
        channel = self._channel(run_id)
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
        if channel.waiters:
            self._pending.add(channel)
            if self._waking is None:
                loop = asyncio.get_running_loop()
                self._waking = (
                    loop.call_later(WAKE_BATCH, self._wake_pending)
                    if WAKE_BATCH > 0
                    else loop.call_soon(self._wake_pending)
                )

    def _wake_pending(self) -> None:
        self._waking = None
        pending, self._pending = self._pending, set()
        for channel in pending:
            self._wake(channel)

    @staticmethod
    def _wake(channel: _Channel) -> None:
        waiters, channel.waiters = channel.waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    def _sweep(self) -> None:
        """Time out the idle followers whose time has come; come back for the next."""
        loop = asyncio.get_running_loop()
        now, left = loop.time(), []
        self._sweeping = None
        for waiter, deadline in self._idle.items():
            if deadline <= now:
                if not waiter.done():
                    waiter.set_result(False)
            else:
                left.append(deadline)
        if left:  # a little later than the first, so that the next few go together
            self._sweeping = loop.call_at(max(min(left), now + 0.25), self._sweep)

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
        if not tail or tail[0][0].seq > after + 1:
            return await self._store.list_events(run_id, after=after, limit=limit)
        if channel.last_seq <= after:
            return []
        if channel.last_seq - after <= limit:
            # Caught up or nearly: what is new is at the tail's end, read from there.
            news = [e for e, _ in itertools.takewhile(lambda p: p[0].seq > after, reversed(tail))]
            news.reverse()
            return news
        rest = itertools.dropwhile(lambda p: p[0].seq <= after, tail)
        return [e for e, _ in itertools.islice(rest, limit)]

    async def _wait(self, channel: _Channel, after: int, idle: float | None) -> bool:
        """Until something is published after ``after`` (True), or ``idle`` seconds pass
        without (False)."""
        if channel.last_seq > after or self._closing:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        channel.waiters.add(waiter)
        if idle is not None:
            deadline = self._idle[waiter] = loop.time() + idle
            if self._sweeping is None or self._sweeping.when() > deadline:
                if self._sweeping is not None:
                    self._sweeping.cancel()
                self._sweeping = loop.call_at(deadline, self._sweep)
        try:
            return await waiter
        finally:
            channel.waiters.discard(waiter)
            self._idle.pop(waiter, None)

    async def follow(
        self, run_id: str, after: int = 0, *, batch: int = 500, idle: float | None = None
    ) -> AsyncIterator[list[models.Event]]:
        """Batches of events with seq > ``after``, live, ending after the run's terminal event
        (or when the hub closes: see ``closing``). With ``idle``, an empty batch after that
        many seconds without events (a heartbeat for the caller)."""
        channel = self._channel(run_id)
        channel.followers += 1
        ended = False
        ask_store = True  # whether the run has ended without us seeing its terminal event
        try:
            while not self._closing:
                events = await self._read(run_id, channel, after, batch)
                if events:
                    after = events[-1].seq
                    if _is_terminal(events[-1]):
                        ended = True
                    yield events
                    if ended:
                        return
                    continue
                if ask_store or channel.closed:
                    run = await self._store.get_run(run_id)
                    if run.status.terminal and after >= await self._store.last_seq(run_id):
                        ended = True
                        return
                    ask_store = False
                if not await self._wait(channel, after, idle):
                    ask_store = True
                    yield []
        finally:
            self._leave(run_id, channel, ended=ended)


def _is_terminal(event: models.Event) -> bool:
    if event.type != models.EventType.run_status:
        return False
    try:
        return models.RunStatus(event.data.get("status", "")).terminal
    except ValueError:
        return False
