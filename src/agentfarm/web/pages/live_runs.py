"""The dashboard's live list, shared by all its viewers: one copy per status filter, brought up
to date from the supervisor's farm-wide feed of run changes (``supervisor.runfeed``, the hub's
``runs``), rendered once per change and sent to every viewer of that filter. No viewer polls the
store: a list is read from the store once, when its first viewer comes (or when the feed's log
no longer reaches back to it, or a run left a full list), and the queue's places are asked for
once per change while runs are queued."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from agentfarm.domain import models
from agentfarm.supervisor import queue
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web import sse
from agentfarm.web.pages import templating

LIMIT = 100  # runs on the dashboard
Queue = dict[str, queue.QueueInfo]


@dataclass
class _List:
    statuses: frozenset[models.RunStatus] | None
    version: int = -1  # the feed's version this copy reflects (-1: never read)
    runs: list[models.Run] = field(default_factory=list)
    signature: str = ""
    serial: int = 0  # bumped when what is shown changes
    frame: bytes = b""
    checked: float = 0.0  # when the queue's places were last asked for (monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _fingerprint(r: models.Run) -> tuple[object, ...]:
    started = r.started_at is None
    return (r.id, r.status, r.cost_usd, r.num_turns, r.branch, started, r.parked_until, r.warning)


def signature(runs: list[models.Run], places: Queue) -> str:
    return json.dumps(
        [_fingerprint(r) for r in runs] + [(k, v.model_dump()) for k, v in sorted(places.items())],
        default=str,
    )


def order(runs: list[models.Run], places: Queue) -> list[models.Run]:
    """Running, then parked and queued (queued in the queue's order), then the rest by
    recency (``runs`` is newest first)."""
    rank = {
        models.RunStatus.running: 0,
        models.RunStatus.starting: 0,
        models.RunStatus.parked: 1,
        models.RunStatus.queued: 1,
    }

    def key(r: models.Run) -> tuple[int, int]:
        place = places.get(r.id)
        return rank.get(r.status, 2), place.position if place else 0

    return sorted(runs, key=key)


async def places_of(sup: Supervisor, runs: list[models.Run]) -> Queue:
    queued = [r.id for r in runs if r.status == models.RunStatus.queued]
    return await sup.queue_info(queued) if queued else {}


class LiveRuns:
    def __init__(self, sup: Supervisor) -> None:
        self._sup = sup
        self._lists: dict[frozenset[models.RunStatus] | None, _List] = {}

    async def _refresh(self, lst: _List) -> None:
        feed, store = self._sup.hub.runs, self._sup.store
        version = feed.version
        changes = feed.since(lst.version) if lst.version >= 0 else None
        runs = _apply(lst, changes) if changes is not None else None
        if runs is None:
            statuses = sorted(lst.statuses) if lst.statuses is not None else None
            runs = await store.list_runs(statuses=statuses, limit=LIMIT)
        places = await places_of(self._sup, runs)
        lst.runs, lst.version, lst.checked = runs, version, time.monotonic()
        shown = signature(runs, places)
        if shown != lst.signature:
            html = templating.fragment("_runs.html", runs=order(runs, places), queue=places)
            lst.signature, lst.frame, lst.serial = shown, sse.message("runs", html), lst.serial + 1

    async def frame(
        self, statuses: frozenset[models.RunStatus] | None, *, idle: bool = False
    ) -> tuple[int, int, bytes]:
        """(the feed version it reflects, its serial, the ``runs`` message) for a filter.
        ``idle``: nothing changed for a while; queued runs' places are asked for again (a
        budget may have freed up) at most once per heartbeat for all viewers."""
        lst = self._lists.get(statuses)
        if lst is None:
            lst = self._lists[statuses] = _List(statuses)
        async with lst.lock:  # one refresh for all the viewers that woke together
            stale = lst.version != self._sup.hub.runs.version
            queued = any(r.status == models.RunStatus.queued for r in lst.runs)
            recheck = idle and queued and time.monotonic() - lst.checked >= sse.HEARTBEAT
            if stale or recheck:
                await self._refresh(lst)
            return lst.version, lst.serial, lst.frame

    async def stream(self, statuses: frozenset[models.RunStatus] | None) -> AsyncIterator[bytes]:
        """A viewer's stream: the list now, then each time what it shows changes."""
        feed, shown, idle = self._sup.hub.runs, -1, False
        while not feed.closing:
            version, serial, frame = await self.frame(statuses, idle=idle)
            if serial != shown:
                shown = serial
                yield frame
            elif idle:
                yield b""  # a heartbeat
            idle = not await feed.wait(version, idle=sse.HEARTBEAT)


def _apply(lst: _List, changes: list[tuple[str, models.Run | None]]) -> list[models.Run] | None:
    """The list with ``changes`` applied (None: a run left a full list, so the store must say
    which one comes next)."""
    runs = {r.id: r for r in lst.runs}
    full = len(runs) >= LIMIT
    for run_id, run in changes:
        if run is not None and (lst.statuses is None or run.status in lst.statuses):
            runs[run_id] = run
        elif runs.pop(run_id, None) is not None and full:
            return None
    ordered = sorted(runs.values(), key=lambda r: (r.created_at, r.id), reverse=True)
    return ordered[:LIMIT]
