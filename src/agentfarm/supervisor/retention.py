"""Retention: what a finished run leaves on disk goes some time after it ended.

A run's branch is already home (fetched into the source repository or pushed) when it ends, so
its workspace, home, logs and leftover output are only worth keeping for a look afterwards. A
periodic sweep hands every run that ended more than ``AGENTFARM_RETENTION_HOURS`` ago to its
backend's ``cleanup``, then clears the run's ``workspace`` (the mark that its files are gone)
and says so in its events. The run's row and events stay until the run is deleted.

Also here: the data directory's disk use for the settings page, walked in a thread and kept for
a short while, since a directory of workspaces can hold a great many files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from agentfarm.backends.base import Backend
from agentfarm.domain import errors, models
from agentfarm.store import Store

log = logging.getLogger(__name__)

#: Bounds of the pause between sweeps (seconds); in between, a tenth of the retention time.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 3600.0


def interval(retention_hours: float) -> float:
    return min(MAX_INTERVAL, max(MIN_INTERVAL, retention_hours * 3600 / 10))


class Retention:
    def __init__(
        self, store: Store, backends: Mapping[str, Backend], retention_hours: float
    ) -> None:
        self.store = store
        self.backends = backends
        self.hours = retention_hours

    async def sweep(self, now: datetime | None = None) -> list[str]:
        """Remove the files of every run that ended before now minus the retention time;
        returns their ids. Does nothing when retention is off (0 hours)."""
        if self.hours <= 0:
            return []
        now = now or models.utcnow()
        cutoff = now - timedelta(hours=self.hours)
        removed: list[str] = []
        for run in await self.store.runs_with_files(finished_before=cutoff):
            backend = self.backends.get(run.spec.backend.type)
            if backend is None:
                continue  # that backend is not enabled here: its files are not ours to find
            try:
                await backend.cleanup(run)
            except Exception as exc:  # one run's trouble must not stop the others' cleanup
                log.warning(
                    "run %s: removing its files failed (tried again later): %s", run.id, exc
                )
                continue
            try:
                await self.store.append_events(
                    run.id, [_removed_notice(run, self.hours)], run_fields={"workspace": None}
                )
            except errors.NotFoundError:
                continue  # deleted meanwhile
            removed.append(run.id)
        if removed:
            log.info("retention: removed the files of %d finished run(s)", len(removed))
        return removed

    async def run_forever(self) -> None:
        pause = interval(self.hours)
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the store or a backend had a bad moment: next time
                log.warning("the retention sweep failed (tried again in %.0f s): %s", pause, exc)
            await asyncio.sleep(pause)


def _removed_notice(run: models.Run, hours: float) -> models.EventDraft:
    branch = f"; the branch {run.branch} stays" if run.branch else ""
    return models.EventDraft(
        type=models.EventType.run_notice,
        data={
            "message": f"removed the run's files (workspace, home, logs) {hours:g} h after it "
            f"ended (AGENTFARM_RETENTION_HOURS){branch}"
        },
    )


# --- disk use ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiskUse:
    #: Bytes the data directory takes on disk (hard-linked files counted once).
    used: int
    #: Bytes the run directories take, included in ``used``.
    runs: int
    #: Bytes free on the data directory's file system.
    free: int
    #: Files and directories counted.
    entries: int
    measured_at: float


def measure(data_dir: Path, runs_dir: Path) -> DiskUse:
    """Walk ``data_dir`` like ``du`` (blocking): allocated blocks, each inode once, no
    symlinks followed, nothing outside its file system; unreadable parts are skipped."""
    seen: set[int] = set()
    totals = {"all": 0, "runs": 0, "entries": 0}
    try:
        device = data_dir.stat().st_dev
    except OSError:
        return DiskUse(0, 0, 0, 0, time.monotonic())
    runs_prefix = os.path.join(os.fspath(runs_dir), "")

    # A loop, not recursion: an agent may nest directories deeper than Python's stack.
    pending = [os.fspath(data_dir)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != device:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if st.st_nlink > 1 and not is_dir:  # a hard link: count its inode once
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            size = st.st_blocks * 512
            totals["all"] += size
            totals["entries"] += 1
            if entry.path.startswith(runs_prefix):
                totals["runs"] += size
            if is_dir:
                pending.append(entry.path)
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError:
        free = 0
    return DiskUse(totals["all"], totals["runs"], free, totals["entries"], time.monotonic())


class DiskUseCache:
    """The data directory's disk use, measured off the event loop at most every ``ttl``
    seconds; concurrent callers share one measurement."""

    def __init__(
        self,
        data_dir: Path,
        runs_dir: Path,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = data_dir
        self.runs_dir = runs_dir
        self.ttl = ttl
        self._clock = clock
        self._value: DiskUse | None = None
        self._taken = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> DiskUse:
        async with self._lock:
            if self._value is None or self._clock() - self._taken >= self.ttl:
                self._value = await asyncio.to_thread(measure, self.data_dir, self.runs_dir)
                self._taken = self._clock()
            return self._value
