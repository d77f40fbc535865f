"""The kubernetes backend's shared pod watch and log slots, against a fake API.

One watch serves every run's pod: a change wakes the handle waiting for it, a broken watch is
renewed from the last version seen, a 410 lists again (a pod missing from the list is gone),
and a pod the watch has not seen yet is read with one GET. Log streams hold a slot each; while
a run waits for one, a busy stream gives its slot up and is reopened without doubling a line.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agentfarm.backends.base import Record
from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.backends.kubernetes import follow as k8s_follow
from agentfarm.backends.kubernetes import handle as k8s_handle
from agentfarm.backends.kubernetes import slots as k8s_slots
from agentfarm.backends.kubernetes import watch as k8s_watch
from tests.unit.test_k8s_cursor import POD, line


def pod(name: str, version: int, phase: str = "Pending") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": str(version)},
        "status": {"phase": phase},
    }


class WatchApi:
    """list_pods answers from ``pods``; each watch_pods call plays the next script: events,
    then ``"end"`` (the server's timeout), ``"broken"`` or ``"gone"`` (a 410 ERROR)."""

    def __init__(self, pods: list[dict[str, Any]], scripts: list[tuple[list[Any], str]]) -> None:
        self.pods = pods
        self.scripts = scripts
        self.watched_from: list[str] = []
        self.gets: list[str] = []
        self.lists = 0
        self.idle = asyncio.Event()
        #: Each watch waits for this first, when set.
        self.gate: asyncio.Event | None = None

    async def list_pods(self, namespace: str, label_selector: str) -> dict[str, Any]:
        self.lists += 1
        return {"metadata": {"resourceVersion": "100"}, "items": copy.deepcopy(self.pods)}

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets.append(name)
        return next((p for p in self.pods if p["metadata"]["name"] == name), None)

    async def watch_pods(
        self, namespace: str, label_selector: str, resource_version: str, server_timeout: int,
        opened: Any = None,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:  # fmt: skip
        self.watched_from.append(resource_version)
        if opened is not None:
            opened(None)
        if self.gate is not None:
            await self.gate.wait()
        if not self.scripts:
            self.idle.set()
            await asyncio.Event().wait()
        events, end = self.scripts.pop(0)
        for event in events:
            await asyncio.sleep(0.01)
            yield event
        if end == "broken":
            raise aiohttp.ServerDisconnectedError()
        if end == "gone":
            raise k8s_api.ApiError(410, "too old resource version")


async def test_one_watch_wakes_each_waiter_and_renews_from_the_last_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(k8s_watch.Backoff, "sleep", lambda self: asyncio.sleep(0))
    a, b = pod("a", 90), pod("b", 91)
    api = WatchApi(
        [a, b],
        [
            ([("MODIFIED", pod("a", 101, "Running")), ("BOOKMARK", pod("", 105))], "broken"),
            ([("DELETED", pod("b", 106))], "end"),
        ],
    )
    watch = k8s_watch.PodWatch(api, "ns", "sel")  # type: ignore[arg-type]
    watch.start()
    try:
        first_a = await watch.get("a")
        assert first_a is not None
        async with asyncio.timeout(5):
            later = await watch.next_state(first_a)
            gone = await watch.next_state(b)
            await api.idle.wait()
        assert later is not None and later["status"]["phase"] == "Running"
        assert gone is None and await watch.get("b") is None
        # listed once; renewed from the bookmark's version after the break, then from b's end
        assert api.lists == 1 and api.watched_from == ["100", "105", "106"]
        assert api.gets == ["a"] or api.gets == []  # at most the GET before the list landed
    finally:
        await watch.aclose()


async def test_a_410_lists_again_and_a_pod_missing_from_the_list_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(k8s_watch.Backoff, "sleep", lambda self: asyncio.sleep(0))
    a = pod("a", 90)
    api = WatchApi([a], [([], "gone")])
    api.gate = asyncio.Event()
    watch = k8s_watch.PodWatch(api, "ns", "sel")  # type: ignore[arg-type]
    watch.start()
    try:
        async with asyncio.timeout(5):
            while api.lists < 1:
                await asyncio.sleep(0.01)
            api.pods = []  # deleted while the watch was away
            api.gate.set()
            assert await watch.next_state(a) is None
        assert api.lists == 2
    finally:
        await watch.aclose()


async def test_a_pod_the_watch_has_not_seen_is_read_once() -> None:
    api = WatchApi([], [])
    watch = k8s_watch.PodWatch(api, "ns", "sel")  # type: ignore[arg-type]
    watch.start()
    try:
        async with asyncio.timeout(5):
            await api.idle.wait()
        api.pods.append(pod("new", 120))
        assert await watch.get("new") is not None
        assert await watch.get("new") is not None
        assert api.gets == ["new"]
        watch.remember(pod("newer", 121))
        assert await watch.get("newer") is not None and api.gets == ["new"]
    finally:
        await watch.aclose()


class BusyLog:
    """A pod's log of ``total`` lines, one every ``pace`` seconds from the first read; each
    read serves it from its start (the kubelet's since-time is coarse)."""

    def __init__(self, total: int, pace: float) -> None:
        self.total, self.pace = total, pace
        self.started: float | None = None
        self.reads = 0

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return POD

    async def pod_log(
        self, namespace: str, name: str, container: str, *, follow: bool,
        since_seconds: int | None = None,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        loop = asyncio.get_running_loop()
        self.reads += 1
        if self.started is None:
            self.started = loop.time()
        for n in range(1, self.total + 1):
            due = self.started + n * self.pace
            if due > loop.time():
                if not follow:
                    return
                await asyncio.sleep(due - loop.time())
            yield line(n)


async def test_a_busy_stream_gives_its_slot_to_a_waiting_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(k8s_slots, "SHARE_SECONDS", 0.1)
    slots = k8s_slots.LogSlots(1)
    busy, short = BusyLog(total=80, pace=0.01), BusyLog(total=3, pace=0.0)
    ended: list[str] = []

    async def follow(name: str, api: BusyLog) -> list[Record]:
        state = k8s_handle.RunState("ns", "agentfarm-run-r1")
        h = k8s_handle.KubernetesHandle(name, api, state, log_slots=slots)  # type: ignore[arg-type]
        found = [r async for r in h.records(after=0)]
        ended.append(name)
        return found

    async with asyncio.timeout(20):
        first = asyncio.create_task(follow("busy", busy))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(follow("short", short))
        busy_records, short_records = await first, await second
    assert ended == ["short", "busy"]  # the short run did not wait for the busy one to end
    assert busy.reads >= 3  # given up at least once, then read again (and drained)
    assert [r.cursor >> 8 for r in busy_records if r.kind == "stdout"] == list(range(1, 81))
    assert [r.cursor >> 8 for r in short_records if r.kind == "stdout"] == [1, 2, 3]
    assert slots.peak == 1 and slots.open == 0


async def test_a_quiet_stream_is_reopened_less_and_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(k8s_follow, "QUIET_REOPEN_SECONDS", 0.01)
    monkeypatch.setattr(k8s_follow, "QUIET_MAX_SECONDS", 0.04)
    waits: list[float] = []
    original = k8s_handle.KubernetesHandle._log

    def spy(
        self: k8s_handle.KubernetesHandle, follow: bool, since: int | None, quiet: Any
    ) -> AsyncIterator[bytes]:
        if follow:
            waits.append(quiet.seconds)
        return original(self, follow, since, quiet)

    monkeypatch.setattr(k8s_handle.KubernetesHandle, "_log", spy)
    api = QuietLog(quiet_reads=5)
    state = k8s_handle.RunState("ns", "agentfarm-run-r1")
    h = k8s_handle.KubernetesHandle("r1", api, state)  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        found = [r async for r in h.records(after=0)]
    assert [r.cursor >> 8 for r in found if r.kind == "stdout"] == [1, 2]
    assert waits == [0.01, 0.01, 0.02, 0.04, 0.04, 0.04, 0.04]


class QuietLog:
    """Line 1, then ``quiet_reads`` reads that bring nothing new, then line 2 and the end."""

    def __init__(self, quiet_reads: int) -> None:
        self.quiet_reads = quiet_reads
        self.reads = 0

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        if self.reads > self.quiet_reads + 1:
            return POD
        agent = {"name": "agent", "state": {"running": {}}}
        return POD | {"status": {"phase": "Running", "containerStatuses": [agent]}}

    async def pod_log(
        self, namespace: str, name: str, container: str, *, follow: bool,
        since_seconds: int | None = None,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        self.reads += 1
        yield line(1)
        if self.reads <= self.quiet_reads + 1:
            await asyncio.Event().wait()
        yield line(2)
