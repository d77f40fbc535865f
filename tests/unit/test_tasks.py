"""The guarded background-task helper: a failure is logged when it happens (nobody has to
await the task), and ``stop`` cancels, waits and names the tasks that would not stop."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from agentfarm import tasks

LOGGER = "agentfarm.tasks"
#: Hang guard only: every wait below ends on an event long before this.
GUARD = 20


class Boom(RuntimeError):
    pass


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def settle(task: asyncio.Task[Any]) -> None:
    """Wait for ``task`` to finish and for its done callbacks to have run."""
    async with asyncio.timeout(GUARD):
        await asyncio.wait([task])
    await asyncio.sleep(0)  # done callbacks are scheduled with call_soon


async def test_a_failure_is_logged_when_it_happens_with_the_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    into: set[asyncio.Task[Any]] = set()
    error = Boom("disk on fire")

    async def fails() -> None:
        raise error

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        task = tasks.spawn(fails(), name="ingest-r1", into=into)
        assert task in into and task.get_name() == "ingest-r1"
        await settle(task)
        failed = records(caplog, logging.ERROR)
    assert len(failed) == 1
    assert failed[0].args == ("ingest-r1",)
    assert failed[0].exc_info is not None and failed[0].exc_info[1] is error
    assert into == set()  # a finished task leaves the set by itself


async def test_success_and_cancellation_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    into: set[asyncio.Task[Any]] = set()
    forever = asyncio.Event()

    async def returns() -> int:
        return 7

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        done = tasks.spawn(returns(), name="quick", into=into)
        waiting = tasks.spawn(forever.wait(), name="waiting", into=into)
        await settle(done)
        assert done.result() == 7
        assert into == {waiting}
        waiting.cancel()
        await settle(waiting)
    assert waiting.cancelled()
    assert into == set()
    assert [r for r in caplog.records if r.name == LOGGER] == []


async def test_a_failed_task_nobody_awaited_is_not_reported_again_by_asyncio() -> None:
    # asyncio complains ("exception was never retrieved") about a failed task nobody looked
    # at when it is collected; the helper has looked, so the failure is reported once.
    loop = asyncio.get_running_loop()
    complaints: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: complaints.append(context))
    try:
        into: set[asyncio.Task[Any]] = set()

        async def fails() -> None:
            raise Boom("lost")

        task = tasks.spawn(fails(), name="orphan", into=into)
        await settle(task)
        del task
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert complaints == []


async def test_stop_cancels_and_waits_for_each_task_to_clean_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    into: set[asyncio.Task[Any]] = set()
    started = [asyncio.Event(), asyncio.Event()]
    cleaned: list[str] = []

    async def worker(name: str, ready: asyncio.Event) -> None:
        ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            cleaned.append(name)

    first = tasks.spawn(worker("a", started[0]), name="a", into=into)
    second = tasks.spawn(worker("b", started[1]), name="b", into=into)
    async with asyncio.timeout(GUARD):
        for ready in started:
            await ready.wait()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with asyncio.timeout(GUARD):
            await tasks.stop(list(into))
    assert sorted(cleaned) == ["a", "b"]  # stop returned only after both cleaned up
    assert first.cancelled() and second.cancelled()
    assert [r for r in caplog.records if r.name == LOGGER] == []


async def test_stop_leaves_finished_tasks_alone() -> None:
    into: set[asyncio.Task[Any]] = set()

    async def returns() -> str:
        return "kept"

    task = tasks.spawn(returns(), name="done", into=into)
    await settle(task)
    await tasks.stop([task])
    assert not task.cancelled() and task.result() == "kept"
    await tasks.stop([])  # nothing to stop: returns at once


async def test_stop_reports_a_task_that_does_not_stop(caplog: pytest.LogCaptureFixture) -> None:
    into: set[asyncio.Task[Any]] = set()
    running, release = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        running.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows the cancellation and keeps going

    task = tasks.spawn(stubborn(), name="stubborn", into=into)
    async with asyncio.timeout(GUARD):
        await running.wait()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        # No waiting at all: the task cannot have stopped, whatever the machine's speed.
        await tasks.stop([task], wait_seconds=0)
        stragglers = records(caplog, logging.WARNING)
    assert [r.args for r in stragglers] == [("stubborn", 0.0)]
    assert not task.done()
    release.set()
    await settle(task)
    assert into == set()
