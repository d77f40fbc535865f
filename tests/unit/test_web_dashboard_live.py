"""The dashboard's live list follows the supervisor's feed of run changes: its viewers share
one copy per filter, read from the store once, and get a run's new status without any store
read (before, each viewer polled the store once a second)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentfarm.backends.fake import FakeBackend
from agentfarm.domain import models
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web.pages.live_runs import LiveRuns

from .supervisor_kit import GUARD, has_status, slow_script, until
from .web_helpers import cockpit

RUN = {"spec": {"repo": "/r", "prompt": "go"}}


def count_reads(monkeypatch: pytest.MonkeyPatch, sup: Supervisor) -> dict[str, int]:
    """How often the store lists runs and the queue is planned (the dashboard's reads: the
    supervisor itself reads single runs as it works) from now on."""
    counts = {"list_runs": 0, "queue_info": 0}
    for name in counts:
        owner = sup.store if name == "list_runs" else sup
        real = getattr(owner, name)

        async def counting(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            counts[_name] += 1
            return await _real(*args, **kw)

        monkeypatch.setattr(owner, name, counting)
    return counts


async def next_with(stream: AsyncIterator[bytes], text: bytes) -> bytes:
    async with asyncio.timeout(GUARD):
        while text not in (frame := await anext(stream)):
            pass
    return frame


async def test_viewers_get_a_status_change_without_a_store_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cockpit(tmp_path, FakeBackend(script=slow_script)) as cp:
        sup = cp.app.state.supervisor
        lists: LiveRuns = cp.app.state.live_runs
        run_id = (await cp.api.post("/api/runs", json=RUN)).json()["id"]
        await has_status(sup.store, run_id, models.RunStatus.running)
        reads = count_reads(monkeypatch, sup)
        viewers = [lists.stream(None) for _ in range(3)]
        for viewer in viewers:
            first = await anext(viewer)
            assert first.startswith(b"event: runs\n") and run_id.encode() in first
        assert reads["list_runs"] == 1  # one read for all three
        waiting = [asyncio.create_task(next_with(v, b"stopped")) for v in viewers]
        await sup.stop_run(run_id)
        for frame in await asyncio.gather(*waiting):
            assert b'data-run="' + run_id.encode() in frame
        assert reads == {"list_runs": 1, "queue_info": 0}
        # A new run appears the same way, read from the feed, not the store.
        other = (await cp.api.post("/api/runs", json=RUN)).json()["id"]
        await next_with(viewers[0], other.encode())
        assert reads["list_runs"] == 1  # (its place in the queue is asked for, not the list)
        # A deleted run leaves the list the same way.

        async def let_go() -> bool:
            return run_id not in sup.dispatcher.active

        await until(let_go)  # its task has given the run back: it may be deleted
        waiting = [asyncio.create_task(anext(viewers[1]))]
        await sup.delete_run(run_id)
        async with asyncio.timeout(GUARD):
            while run_id.encode() in (frame := await waiting[0]):
                waiting = [asyncio.create_task(anext(viewers[1]))]
        assert other.encode() in frame
        assert reads["list_runs"] == 1
        for viewer in viewers:
            await viewer.aclose()  # type: ignore[attr-defined]


async def test_an_idle_dashboard_does_not_poll_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cockpit(tmp_path) as cp:
        lists: LiveRuns = cp.app.state.live_runs
        reads = count_reads(monkeypatch, cp.app.state.supervisor)
        viewer = lists.stream(frozenset({models.RunStatus.succeeded}))
        assert b"event: runs" in await anext(viewer)
        quiet = asyncio.create_task(anext(viewer))
        await asyncio.sleep(2.5)  # the old stream read the store once a second here
        assert not quiet.done()
        assert reads == {"list_runs": 1, "queue_info": 0}
        quiet.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quiet
        await viewer.aclose()  # type: ignore[attr-defined]


async def test_a_run_leaving_a_full_list_reads_the_next_one_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cockpit(tmp_path) as cp:
        sup = cp.app.state.supervisor
        lists: LiveRuns = cp.app.state.live_runs
        monkeypatch.setattr("agentfarm.web.pages.live_runs.LIMIT", 2)
        ids = []
        for _ in range(3):  # ended runs: nothing in the server touches them meanwhile
            run = models.Run(spec=models.AgentSpec(repo="/r"), status=models.RunStatus.succeeded)
            ids.append((await sup.store.create_run(run)).id)
        reads = count_reads(monkeypatch, sup)
        viewer = lists.stream(frozenset({models.RunStatus.succeeded}))
        first = await anext(viewer)
        assert ids[2].encode() in first and ids[1].encode() in first
        assert ids[0].encode() not in first
        waiting = asyncio.create_task(next_with(viewer, ids[0].encode()))
        await sup.delete_run(ids[2])  # leaves a full list: the store says who comes next
        shown = await waiting
        assert ids[2].encode() not in shown and ids[1].encode() in shown
        assert reads["list_runs"] == 2
        await viewer.aclose()  # type: ignore[attr-defined]
