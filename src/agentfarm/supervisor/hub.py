"""Fan-out of committed events to any number of viewers.

One ingest task per run writes events; viewers never touch the agent. Each run keeps an
in-memory tail bounded in bytes, so viewers that are caught up read from memory; a viewer
further behind (a reconnect with an old Last-Event-ID, a "load older") reads the store.

Each follower is a cursor (the last seq it has) into the run's shared tail: a caught-up
follower reads only what is new, from the tail's end. Waking is cheap for many followers:
each waits on a future of its own, and wake-ups are batched: the channels published to within
one loop iteration are woken together, each follower once, with no lock to take in turn, and
wake-ups are at least ``WAKE_GAP`` apart (see there).
A follower asks the store whether its run has ended only when it starts, when the channel
says the run ended, and after an idle period, never once per event.

A follower may also give a ``push``: while it waits, caught up, the events published for it
are handed to ``push`` at the wake-up itself (the cockpit writes them straight to the viewer's
socket), and its task is woken only when ``push`` declines (a batch it cannot take there, a
viewer whose socket is not keeping up) or at the end. One viewer's event then costs a call, not
a task's step through every layer of its response (issue 12: 200 viewers).

A run's channel lives while its run is ingested or someone follows it: it goes once the run
has ended (its terminal event published, or the run found finished in the store) and its last
follower has left, so viewing old runs leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from agentfarm.domain import models
from agentfarm.store import Store
from agentfarm.supervisor import runfeed

log = logging.getLogger(__name__)

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
#: The least time between two wake-ups of followers, in seconds. A publish after a quiet spell
#: wakes them at once; one within this time of the last wake-up waits for the rest of it, so
#: that under load the events of all runs go out together, in one burst of writes that wakes
#: each viewer's process once, not once per event: at most 20 bursts a second. With 20 runs
#: at 5 events/s and 200 viewers, 50 ms cost 0.3-0.4 % of a core less than 20 ms in three runs
#: of four (0.2 % more in the fourth), for a delay p99 of 52-56 ms instead of 23-26 ms; with
#: 500 runs at an event a second and a viewer each, no less (bench/cockpit.py, bench/scale.py,
#: docs/benchmarks.md).
#: The server's is ``AGENTFARM_STREAM_BATCH_MS``; this is its default.
WAKE_GAP = 0.05


def event_size(event: models.Event) -> int:
    """An estimate of the memory an event holds: its data, about as large as its compact JSON,
    that JSON itself (kept with the event to be served: ``EventDraft.data_json``), plus
    overhead (tracemalloc, a 130-byte text event: 1,460 bytes without its JSON, 1,780 with)."""
    return EVENT_OVERHEAD + 2 * len(event.data_json())


#: Takes a follower's news at the wake-up (see ``Hub.follow``): True if it took them all.
Push = Callable[[list[models.Event]], bool]


@dataclass(eq=False, slots=True)
class _Cursor:
    """A follower's place: the last seq it has, and what takes its news while it waits."""

    after: int
    push: Push | None = None
    #: Its heartbeat period (``follow``'s ``idle``): a push starts the period again.
    idle: float | None = None


@dataclass(eq=False)  # hashed by identity (the channels to wake)
class _Channel:
    tail: deque[tuple[models.Event, int]] = field(default_factory=deque)
    tail_bytes: int = 0
    #: Followers waiting for news, each on its own future (removed when it stops waiting),
    #: with its cursor.
    waiters: dict[asyncio.Future[bool], _Cursor] = field(default_factory=dict)
    last_seq: int = 0
    closed: bool = False
    followers: int = 0


class Hub:
    def __init__(
        self,
        store: Store,
        *,
        tail_bytes: int = TAIL_BYTES,
        total_bytes: int = TAIL_TOTAL_BYTES,
        wake_gap: float | None = None,
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
        #: Channels published to since the last wake-up, woken together (``WAKE_GAP``).
        self._pending: set[_Channel] = set()
        self._waking: asyncio.TimerHandle | asyncio.Handle | None = None
        #: When followers were last woken (loop time), and the least time between two.
        self._woke = float("-inf")
        self._wake_gap = WAKE_GAP if wake_gap is None else wake_gap
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
                due = self._woke + self._wake_gap
                self._waking = (
                    loop.call_at(due, self._wake_pending)
                    if due > loop.time()
                    else loop.call_soon(self._wake_pending)
                )

    def _wake_pending(self) -> None:
        self._waking = None
        self._woke = asyncio.get_running_loop().time()
        pending, self._pending = self._pending, set()
        for channel in pending:
            self._wake(channel)

    def _wake(self, channel: _Channel) -> None:
        waiters, channel.waiters = channel.waiters, {}
        now: float | None = None
        found: dict[int, list[models.Event] | None] = {}  # the news after a seq, read once
        for waiter, cursor in waiters.items():
            if waiter.done():
                continue
            if cursor.push is not None and not self._closing:
                if cursor.after in found:
                    news = found[cursor.after]
                else:
                    news = found[cursor.after] = self._news(channel, cursor.after)
                if news and _pushed(cursor.push, news):
                    cursor.after = news[-1].seq
                    channel.waiters[waiter] = cursor  # still waiting, caught up again
                    if cursor.idle is not None and waiter in self._idle:
                        now = asyncio.get_running_loop().time() if now is None else now
                        self._idle[waiter] = now + cursor.idle
                    continue
            waiter.set_result(True)

    @staticmethod
    def _news(channel: _Channel, after: int, limit: int = 100) -> list[models.Event] | None:
        """What is new after ``after`` if the tail holds all of it and it does not end the run
        (the follower's own task takes the end), else None."""
        tail = channel.tail
        if not tail or tail[0][0].seq > after + 1 or channel.last_seq - after > limit:
            return None
        news = _newest(tail, after)
        return news if news and not ends_run(news[-1]) else None

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
            return _newest(tail, after)  # caught up or nearly: read from the tail's end
        rest = itertools.dropwhile(lambda p: p[0].seq <= after, tail)
        return [e for e, _ in itertools.islice(rest, limit)]

    async def _wait(self, channel: _Channel, cursor: _Cursor) -> bool:
        """Until something is published after the cursor that its push did not take (True),
        or its ``idle`` seconds pass without (False)."""
        if channel.last_seq > cursor.after or self._closing:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        channel.waiters[waiter] = cursor
        idle = cursor.idle
        if idle is not None:
            deadline = self._idle[waiter] = loop.time() + idle
            if self._sweeping is None or self._sweeping.when() > deadline:
                if self._sweeping is not None:
                    self._sweeping.cancel()
                self._sweeping = loop.call_at(deadline, self._sweep)
        try:
            return await waiter
        finally:
            channel.waiters.pop(waiter, None)
            self._idle.pop(waiter, None)

    async def follow(
        self,
        run_id: str,
        after: int = 0,
        *,
        batch: int = 500,
        idle: float | None = None,
        push: Push | None = None,
    ) -> AsyncIterator[list[models.Event]]:
        """Batches of events with seq > ``after``, live, ending after the run's terminal event
        (or when the hub closes: see ``closing``). With ``idle``, an empty batch after that
        many seconds without events (a heartbeat for the caller). With ``push``, the news
        that arrive while the caller waits go to ``push`` first (see the module's doc): what
        it takes is not yielded again."""
        channel = self._channel(run_id)
        channel.followers += 1
        cursor = _Cursor(after, push, idle)
        ended = False
        ask_store = True  # whether the run has ended without us seeing its terminal event
        try:
            while not self._closing:
                after = cursor.after
                events = await self._read(run_id, channel, after, batch)
                if events:
                    after = cursor.after = events[-1].seq
                    if ends_run(events[-1]):
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
                if not await self._wait(channel, cursor):
                    ask_store = True
                    yield []
        finally:
            self._leave(run_id, channel, ended=ended)


def _newest(tail: deque[tuple[models.Event, int]], after: int) -> list[models.Event]:
    """The tail's events after ``after``, read back from its end (the few new ones)."""
    news = [e for e, _ in itertools.takewhile(lambda p: p[0].seq > after, reversed(tail))]
    news.reverse()
    return news


def _pushed(push: Push, news: list[models.Event]) -> bool:
    """``push(news)``; a push that fails declines (its follower's task takes the news)."""
    try:
        return push(news)
    except Exception:
        log.exception("pushing events to a follower failed; its task takes them")
        return False


def ends_run(event: models.Event) -> bool:
    """The event is the run's terminal status: ``follow`` ends after the batch holding it."""
    if event.type != models.EventType.run_status:
        return False
    try:
        return models.RunStatus(event.data.get("status", "")).terminal
    except ValueError:
        return False
