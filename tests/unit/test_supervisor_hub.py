"""The hub: a run's tail is bounded in bytes, and channels go once their run has ended and
its last follower has left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentfarm.domain import models
from agentfarm.store import Store
from agentfarm.supervisor import hub as hub_module
from agentfarm.supervisor.hub import Hub


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "agentfarm.db")
    yield store
    await store.close()


async def new_run(store: Store) -> models.Run:
    return await store.create_run(models.Run(spec=models.AgentSpec(repo="/srv/repo")))


def texts(n: int, size: int) -> list[models.EventDraft]:
    return [
        models.EventDraft(type=models.EventType.agent_text, data={"text": f"{i:04d}" + "x" * size})
        for i in range(n)
    ]


def status(value: models.RunStatus) -> models.EventDraft:
    return models.EventDraft(type=models.EventType.run_status, data={"status": value.value})


async def store_and_publish(
    hub: Hub, store: Store, run_id: str, drafts: list[models.EventDraft], *, final: bool = False
) -> list[models.Event]:
    events, _ = await store.append_events(run_id, drafts)
    await hub.publish(run_id, events, final=final)
    return events


async def collect(hub: Hub, run_id: str, after: int = 0) -> list[models.Event]:
    async def go() -> list[models.Event]:
        return [e async for batch in hub.follow(run_id, after) for e in batch]

    return await asyncio.wait_for(go(), 10)


async def parked(hub: Hub, run_id: str, followers: int = 1) -> None:
    """Until ``followers`` followers of ``run_id`` wait for news (found nothing more to read)."""

    async def go() -> None:
        while True:
            channel = hub._channels.get(run_id)
            if channel is not None and len(channel.waiters) >= followers:
                return
            await asyncio.sleep(0.001)

    await asyncio.wait_for(go(), 10)


async def test_tail_is_bounded_in_bytes_and_older_events_come_from_the_store(
    store: Store,
) -> None:
    # Fails before: the tail held the last 2000 events whatever their size.
    hub = Hub(store, tail_bytes=64 * 1024)
    run = await new_run(store)
    for _ in range(10):
        await store_and_publish(hub, store, run.id, texts(10, 4000))
    assert 0 < hub.tail_bytes(run.id) <= 64 * 1024
    assert hub.tail_bytes(run.id) == sum(size for _, size in hub._channels[run.id].tail)
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.succeeded)], final=True)
    seen = await collect(hub, run.id)
    assert [e.seq for e in seen] == list(range(1, 102))


def test_event_size_grows_with_the_data() -> None:
    small = models.Event(run_id="r", seq=1, type=models.EventType.agent_text, data={"text": "a"})
    big = small.model_copy(update={"data": {"text": "é" * 10_000}})
    assert hub_module.event_size(big) - hub_module.event_size(small) >= 9_999


async def test_following_an_ended_run_leaves_no_channel(store: Store) -> None:
    # Fails before: every follow made a channel that nothing removed.
    hub = Hub(store)
    run = await new_run(store)
    await store.append_events(run.id, [*texts(3, 10), status(models.RunStatus.failed)])
    await store.update_run(run.id, status=models.RunStatus.failed)
    assert len(await collect(hub, run.id)) == 4
    assert len(await collect(hub, run.id, after=4)) == 0  # caught up: ends at once
    assert hub._channels == {}


async def test_channel_stays_for_a_follower_and_goes_when_the_last_one_leaves(
    store: Store,
) -> None:
    # Fails before: forget() dropped the channel under a follower, which made a new one
    # that was never removed.
    hub = Hub(store)
    run = await new_run(store)
    await store_and_publish(hub, store, run.id, texts(2, 10))
    stream = hub.follow(run.id)
    assert [e.seq for e in await anext(stream)] == [1, 2]
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.succeeded)], final=True)
    await store.update_run(run.id, status=models.RunStatus.succeeded)
    hub.forget(run.id)
    assert run.id in hub._channels  # its follower is still reading
    assert [e.seq for e in await anext(stream)] == [3]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert hub._channels == {}


async def test_a_follower_leaving_a_live_run_keeps_its_channel_until_the_run_ends(
    store: Store,
) -> None:
    hub = Hub(store)
    run = await new_run(store)
    await store_and_publish(hub, store, run.id, texts(2, 10))
    stream = hub.follow(run.id)
    assert len(await anext(stream)) == 2
    await stream.aclose()  # a viewer closed the page
    assert run.id in hub._channels  # the run goes on: its tail serves the next viewer
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.stopped)], final=True)
    hub.forget(run.id)
    assert hub._channels == {}


async def test_a_waiting_follower_gets_what_is_published_then_ends_with_the_run(
    store: Store,
) -> None:
    hub = Hub(store)
    run = await new_run(store)
    stream = hub.follow(run.id)
    waiting = asyncio.create_task(anext(stream))
    await parked(hub, run.id)
    await store_and_publish(hub, store, run.id, texts(2, 10))
    assert [e.seq for e in await asyncio.wait_for(waiting, 10)] == [1, 2]
    waiting = asyncio.create_task(anext(stream))
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.succeeded)], final=True)
    last = await asyncio.wait_for(waiting, 10)
    assert [(e.seq, e.type, e.data) for e in last] == [
        (3, models.EventType.run_status, {"status": "succeeded"})
    ]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_every_follower_sees_every_event_once_in_order(store: Store) -> None:
    hub = Hub(store)
    run = await new_run(store)
    followers = [asyncio.create_task(collect(hub, run.id)) for _ in range(3)]
    await parked(hub, run.id, followers=3)
    for _ in range(4):
        await store_and_publish(hub, store, run.id, texts(3, 10))
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.failed)], final=True)
    await store.update_run(run.id, status=models.RunStatus.failed)
    for follower in followers:
        assert [e.seq for e in await follower] == list(range(1, 14))
    hub.forget(run.id)
    assert hub._channels == {}


async def test_publishing_the_same_events_again_does_not_double_them(store: Store) -> None:
    hub = Hub(store)
    run = await new_run(store)
    events = await store_and_publish(hub, store, run.id, texts(3, 100))
    held = hub.tail_bytes(run.id)
    await hub.publish(run.id, events)  # e.g. a retry after a hiccup
    await hub.publish(run.id, events[:1])
    assert hub.tail_bytes(run.id) == held
    assert [e.seq for e, _ in hub._channels[run.id].tail] == [1, 2, 3]


async def test_a_reconnect_gets_only_what_it_has_not_seen_in_batches(store: Store) -> None:
    hub = Hub(store)
    run = await new_run(store)
    await store_and_publish(hub, store, run.id, texts(7, 10))
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.stopped)], final=True)
    await store.update_run(run.id, status=models.RunStatus.stopped)

    async def batches(after: int) -> list[list[int]]:
        stream = hub.follow(run.id, after, batch=3)
        return [[e.seq for e in batch] async for batch in stream]

    assert await asyncio.wait_for(batches(2), 10) == [[3, 4, 5], [6, 7, 8]]
    assert await asyncio.wait_for(batches(0), 10) == [[1, 2, 3], [4, 5, 6], [7, 8]]


async def test_events_before_the_tail_come_from_the_store_in_order(store: Store) -> None:
    hub = Hub(store, tail_bytes=3 * hub_module.EVENT_OVERHEAD + 3 * 200)
    run = await new_run(store)
    await store_and_publish(hub, store, run.id, texts(10, 100))
    tail = [e.seq for e, _ in hub._channels[run.id].tail]
    assert tail[0] > 2 and tail[-1] == 10  # the oldest events left the tail
    stream = hub.follow(run.id, after=1)
    got: list[int] = []
    while len(got) < 9:
        got += [e.seq for e in await asyncio.wait_for(anext(stream), 10)]
    assert got == list(range(2, 11))
    await stream.aclose()


async def test_a_run_ended_in_the_store_ends_its_followers_without_a_status_event(
    store: Store,
) -> None:
    # A run ended while nobody ingested it (found finished after a restart): the store says so.
    hub = Hub(store)
    run = await new_run(store)
    await store.append_events(run.id, texts(2, 10))
    await store.update_run(run.id, status=models.RunStatus.lost)
    assert [e.seq for e in await collect(hub, run.id)] == [1, 2]
    assert hub._channels == {}


async def test_only_a_terminal_status_event_ends_a_live_stream(store: Store) -> None:
    hub = Hub(store)
    run = await new_run(store)
    odd = models.EventDraft(type=models.EventType.run_status, data={"status": "no-such-status"})
    shapes = [status(models.RunStatus.running), odd]
    await store_and_publish(hub, store, run.id, shapes)
    stream = hub.follow(run.id)
    assert [e.seq for e in await anext(stream)] == [1, 2]
    waiting = asyncio.create_task(anext(stream))
    await parked(hub, run.id)
    assert not waiting.done()  # neither `running` nor an unknown status ends it
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.stopped)], final=True)
    assert [e.seq for e in await asyncio.wait_for(waiting, 10)] == [3]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_follower_leaving_a_channel_nobody_published_to_leaves_nothing(
    store: Store,
) -> None:
    hub = Hub(store)
    run = await new_run(store)  # queued: nothing published yet
    stream = hub.follow(run.id)
    waiting = asyncio.create_task(anext(stream))
    await parked(hub, run.id)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await stream.aclose()
    assert hub._channels == {}
    hub.forget(run.id)  # forgetting an unknown run is harmless
    assert hub.tail_bytes(run.id) == 0


# --- many followers: cursors into the shared tail --------------------------------------------
class CountingStore:
    """The store, counting the reads the hub makes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._store, name)
        if name in ("get_run", "last_seq", "list_events"):
            self.reads += 1
        return attr


async def test_caught_up_followers_read_the_tail_not_the_store_for_each_event(
    store: Store,
) -> None:
    # Fails before: every follower asked the store for the run and its last seq after each
    # batch it got (two reads per event per viewer).
    counting = CountingStore(store)
    hub = Hub(counting)  # type: ignore[arg-type]
    run = await new_run(store)
    await store_and_publish(hub, store, run.id, texts(1, 10))
    followers = [asyncio.create_task(collect(hub, run.id)) for _ in range(5)]
    await parked(hub, run.id, followers=5)
    at_start = counting.reads
    assert at_start <= 5 * 2  # each asked once, when it started
    for _ in range(20):
        await store_and_publish(hub, store, run.id, texts(1, 10))
        await parked(hub, run.id, followers=5)
    assert counting.reads == at_start
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.failed)], final=True)
    for follower in followers:
        assert [e.seq for e in await follower] == list(range(1, 23))


async def test_a_slow_follower_holds_nobody_back_and_catches_up_from_the_store(
    store: Store,
) -> None:
    hub = Hub(store, tail_bytes=8 * 1024)
    run = await new_run(store)
    slow = hub.follow(run.id, batch=50)
    quick = asyncio.create_task(collect(hub, run.id))
    await parked(hub, run.id)
    await store_and_publish(hub, store, run.id, texts(1, 10))
    assert [e.seq for e in await asyncio.wait_for(anext(slow), 10)] == [1]
    # The slow one reads nothing more while 300 events go by: the quick one gets them all and
    # the tail stays within its bound (nothing is queued for the slow one).
    for _ in range(30):
        await store_and_publish(hub, store, run.id, texts(10, 200))
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.succeeded)], final=True)
    assert [e.seq for e in await quick] == list(range(1, 303))
    assert hub.tail_bytes(run.id) <= 8 * 1024
    got = [e.seq async for batch in slow for e in batch]  # from the store, then the tail
    assert got == list(range(2, 303))


async def test_a_resume_after_any_seq_is_exact_while_the_tail_has_moved_on(store: Store) -> None:
    hub = Hub(store, tail_bytes=6 * hub_module.EVENT_OVERHEAD + 6 * 200)
    run = await new_run(store)
    for _ in range(4):
        await store_and_publish(hub, store, run.id, texts(5, 100))
    assert hub._channels[run.id].tail[0][0].seq > 10  # the oldest are only in the store
    for after in range(21):
        stream = hub.follow(run.id, after, batch=4)
        got: list[int] = []
        while len(got) < 20 - after:
            got += [e.seq for e in await asyncio.wait_for(anext(stream), 10)]
        await stream.aclose()
        assert got == list(range(after + 1, 21)), after


async def test_an_idle_follower_gets_heartbeats_and_close_lets_it_go(store: Store) -> None:
    hub = Hub(store)
    run = await new_run(store)
    await store_and_publish(hub, store, run.id, texts(1, 10))
    stream = hub.follow(run.id, idle=0.05)
    assert [e.seq for e in await anext(stream)] == [1]
    assert await asyncio.wait_for(anext(stream), 10) == []  # nothing for a while
    waiting = asyncio.create_task(anext(stream))
    await parked(hub, run.id)
    hub.close()  # the server stops: the run goes on, its followers are let go
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 10)
    assert hub.closing


async def test_all_tails_share_one_budget_and_viewers_still_get_everything(store: Store) -> None:
    # 500 runs at 4 MiB each would be 2 GiB: the runs share one budget instead (issue 12).
    total = 4 * hub_module.TAIL_FLOOR
    hub = Hub(store, total_bytes=total)
    runs = [await new_run(store) for _ in range(2)]
    for run in runs:
        await store_and_publish(hub, store, run.id, texts(100, 1000))
    assert all(hub.tail_bytes(r.id) <= total // 2 for r in runs)
    assert hub.tail_bytes(runs[0].id) > total // 2 - 3000  # its whole share, not less
    runs += [await new_run(store) for _ in range(6)]
    for run in runs[2:]:
        await store_and_publish(hub, store, run.id, texts(100, 1000))
    # Eight runs: the floor each, the first two trimmed down to it as the others came.
    assert all(hub.tail_bytes(r.id) <= hub_module.TAIL_FLOOR for r in runs)
    assert hub._held == sum(hub.tail_bytes(r.id) for r in runs)
    for run in runs[:2]:
        await store_and_publish(hub, store, run.id, [status(models.RunStatus.failed)], final=True)
        await store.update_run(run.id, status=models.RunStatus.failed)
        assert [e.seq for e in await collect(hub, run.id)] == list(range(1, 102))
    assert hub._held == sum(hub.tail_bytes(r.id) for r in runs[2:])


def test_the_run_feed_gives_a_runs_last_recent_change() -> None:
    from agentfarm.supervisor.runfeed import RunFeed

    feed = RunFeed(log_size=16)
    first = models.Run(id="run-a", spec=models.AgentSpec(repo="/r", prompt="p"))
    feed.changed(first)
    assert feed.latest("run-a") == first
    assert feed.latest("run-b") is None  # never changed: the store has it
    later = first.model_copy(update={"status": models.RunStatus.running})
    feed.changed(later)
    latest = feed.latest("run-a")
    assert latest is not None and latest.status == models.RunStatus.running
    for i in range(3):
        feed.changed(models.Run(id=f"other-{i}", spec=first.spec))
    assert feed.latest("run-a", within=3) is None  # too far back: the store again
    feed.deleted("run-a")
    assert feed.latest("run-a") is None
