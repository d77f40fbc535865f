"""The hub's push: a waiting follower's news go to its ``push`` at the wake-up, its task is
woken only for what ``push`` declines, for the end, and for heartbeats; nothing is lost or
doubled either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pydantic
import pytest

from agentfarm.domain import models
from agentfarm.store import Store
from agentfarm.supervisor.hub import WAKE_GAP, Hub
from agentfarm.supervisor.runs import Supervisor

from .conftest import make_settings
from .test_supervisor_hub import new_run, parked, status, store_and_publish, texts


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "agentfarm.db")
    yield store
    await store.close()


class Pusher:
    """Takes batches while ``accept`` says so, counting what it took."""

    def __init__(self) -> None:
        self.accept = True
        self.pushed: list[list[int]] = []
        self.fail = False

    def __call__(self, batch: list[models.Event]) -> bool:
        if self.fail:
            raise RuntimeError("a broken push")
        if not self.accept:
            return False
        self.pushed.append([e.seq for e in batch])
        return True


async def until(check: Callable[[], bool]) -> None:
    async def go() -> None:
        while not check():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(go(), 10)


async def pushed(push: Pusher, count: int) -> None:
    """Until ``push`` took ``count`` batches (wake-ups are at least ``WAKE_GAP`` apart)."""
    await until(lambda: len(push.pushed) >= count)


async def follow_into(
    hub: Hub, run_id: str, push: Pusher, yielded: list[list[int]], *, idle: float | None = None
) -> None:
    async for batch in hub.follow(run_id, 0, idle=idle, push=push):
        yielded.append([e.seq for e in batch])


async def test_news_of_a_waiting_follower_go_to_its_push_not_its_task(store: Store) -> None:
    hub = Hub(store)
    run = await new_run(store)
    await store_and_publish(hub, store, run.id, texts(2, 10))
    push, yielded = Pusher(), []
    task = asyncio.create_task(follow_into(hub, run.id, push, yielded))
    await parked(hub, run.id)
    assert yielded == [[1, 2]]  # what was there at the start: the task's way
    for i in range(3):
        await store_and_publish(hub, store, run.id, texts(2, 10))
        await pushed(push, i + 1)
    assert push.pushed == [[3, 4], [5, 6], [7, 8]]
    assert yielded == [[1, 2]]  # the task was not woken for them
    # The end is the task's: it yields the terminal event and returns.
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.succeeded)], final=True)
    await asyncio.wait_for(task, 10)
    assert yielded == [[1, 2], [9]]


async def test_what_push_declines_the_task_yields_once_in_order(store: Store) -> None:
    hub = Hub(store)
    run = await new_run(store)
    push, yielded = Pusher(), []
    task = asyncio.create_task(follow_into(hub, run.id, push, yielded))
    await parked(hub, run.id)
    await store_and_publish(hub, store, run.id, texts(1, 10))
    await pushed(push, 1)
    push.accept = False  # a viewer whose socket is not keeping up
    await store_and_publish(hub, store, run.id, texts(2, 10))
    await until(lambda: len(yielded) == 1)
    await parked(hub, run.id)
    push.accept = True
    await store_and_publish(hub, store, run.id, texts(1, 10))
    await pushed(push, 2)
    push.fail = True  # a push that raises declines too
    await store_and_publish(hub, store, run.id, texts(1, 10))
    await until(lambda: len(yielded) == 2)
    await parked(hub, run.id)
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.failed)], final=True)
    await asyncio.wait_for(task, 10)
    assert push.pushed == [[1], [4]]
    assert yielded == [[2, 3], [5], [6]]
    seen = sorted(s for batch in push.pushed + yielded for s in batch)
    assert seen == [1, 2, 3, 4, 5, 6]


async def test_many_followers_each_get_every_event_once_pushed_or_yielded(store: Store) -> None:
    hub = Hub(store, wake_gap=0)  # every publish wakes at the next loop iteration
    run = await new_run(store)
    pushes = [Pusher() for _ in range(10)]
    yielded: list[list[list[int]]] = [[] for _ in pushes]
    tasks = [
        asyncio.create_task(follow_into(hub, run.id, p, y))
        for p, y in zip(pushes, yielded, strict=True)
    ]
    await parked(hub, run.id, followers=10)
    for i in range(20):
        for j, p in enumerate(pushes):
            p.accept = (i + j) % 3 != 0
        await store_and_publish(hub, store, run.id, texts(1, 10))
        await asyncio.sleep(0)
    await store_and_publish(hub, store, run.id, [status(models.RunStatus.succeeded)], final=True)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for p, y in zip(pushes, yielded, strict=True):
        assert [s for batch in p.pushed + y for s in batch] != []
        assert sorted(s for batch in p.pushed + y for s in batch) == list(range(1, 22))


async def test_pushes_keep_a_follower_from_its_heartbeat_and_close_lets_it_go(
    store: Store,
) -> None:
    hub = Hub(store)
    run = await new_run(store)
    push, yielded = Pusher(), []
    task = asyncio.create_task(follow_into(hub, run.id, push, yielded, idle=0.3))
    await parked(hub, run.id)
    for _ in range(6):  # 0.6 s of news every 0.1 s: never idle for 0.3 s
        await store_and_publish(hub, store, run.id, texts(1, 10))
        await asyncio.sleep(0.1)
    assert len(push.pushed) == 6
    assert yielded == []
    await asyncio.sleep(0.5)  # now idle: a heartbeat
    assert [] in yielded
    hub.close()
    await asyncio.wait_for(task, 10)


async def test_wake_ups_are_a_gap_apart_and_gather_what_came_meanwhile(store: Store) -> None:
    hub = Hub(store, wake_gap=0.2)
    runs = [await new_run(store) for _ in range(3)]
    pushes = [Pusher() for _ in runs]
    tasks = [
        asyncio.create_task(follow_into(hub, run.id, push, []))
        for run, push in zip(runs, pushes, strict=True)
    ]
    for run in runs:
        await parked(hub, run.id)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await store_and_publish(hub, store, runs[0].id, texts(1, 10))
    await pushed(pushes[0], 1)  # after a quiet spell: at once
    assert loop.time() - start < 0.15
    for run in runs:  # within the gap: held, then all woken together
        await store_and_publish(hub, store, run.id, texts(1, 10))
    await asyncio.sleep(0.05)
    assert [len(p.pushed) for p in pushes] == [1, 0, 0]
    await pushed(pushes[2], 1)
    assert [len(p.pushed) for p in pushes] == [2, 1, 1]
    assert loop.time() - start >= 0.19
    hub.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def test_the_gap_between_wake_ups_is_the_servers_stream_batch_ms(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    """``AGENTFARM_STREAM_BATCH_MS`` is the hub's gap: 0 wakes viewers for every publish, the
    default is the hub's own (50 ms), and what is out of range is refused with its bounds."""
    assert supervisors().hub._wake_gap == WAKE_GAP == 0.05
    sup = supervisors(stream_batch_ms=0)
    assert sup.hub._wake_gap == 0
    run = await new_run(sup.store)
    push = Pusher()
    task = asyncio.create_task(follow_into(sup.hub, run.id, push, []))
    await parked(sup.hub, run.id)
    for _ in range(3):  # back to back: with no gap, each goes out at its own wake-up
        await store_and_publish(sup.hub, sup.store, run.id, texts(1, 10))
    await until(lambda: sum(map(len, push.pushed)) >= 3)
    assert push.pushed == [[1], [2], [3]]
    sup.hub.close()
    await asyncio.wait_for(task, 10)
    assert supervisors(stream_batch_ms=250).hub._wake_gap == 0.25
    for wrong in (-1, 1001):
        with pytest.raises(pydantic.ValidationError, match="stream_batch_ms"):
            make_settings(tmp_path, stream_batch_ms=wrong)
