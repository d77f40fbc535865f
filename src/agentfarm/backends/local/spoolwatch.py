"""Wake-ups for the spool readers of every local run: one inotify instance for the backend.

Each reader subscribes to its run directory (not the spool itself, which may not exist yet)
and is woken when its spool is written, created or moved in, when the directory goes, or when
the kernel's event queue overflowed (then every reader looks again: a rescan). The one
inotify descriptor is read by the event loop (``add_reader``): a quiet run costs nothing.

The writer's end is watched too: a pidfd (``os.pidfd_open``) of the run's monitor becomes
readable when it exits, so a monitor killed without writing its exit frame is noticed at once,
without a timer per run. Readers still look on their own every ``FollowOptions.alive_every``
seconds, as a safety net only; a run directory inotify cannot watch (no inotify, the watch
limit reached: logged with what to do) is polled faster instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator

from agentfarm.backends.local import inotify, procs

log = logging.getLogger(__name__)

#: What wakes a directory's readers: a file in it written, created or moved in (the name
#: says which file), or the directory itself removed or moved away.
DIR_MASK = (
    inotify.IN_MODIFY
    | inotify.IN_CLOSE_WRITE
    | inotify.IN_CREATE
    | inotify.IN_MOVED_TO
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
    | inotify.IN_ONLYDIR
)
_GONE = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_IGNORED


class Subscription:
    """One reader's wake-ups: set by inotify for its file, or by its writer's exit."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: inotify watches the directory: wake-ups come; else the reader polls.
        self.watched = False
        #: The writer's exit is watched (a pidfd), and whether it was seen.
        self.writer_watched = False
        self.writer_gone = False
        #: How often :meth:`wait` returned (tests and benchmarks count them).
        self.wakeups = 0
        self._event = asyncio.Event()
        self._pidfd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self) -> None:
        """Until a wake-up (one that came since :meth:`clear` counts); callers bound it."""
        try:
            await self._event.wait()
        finally:
            self.wakeups += 1

    async def watch_process(self, pid: int, started: int) -> bool:
        """Be woken when the process ``pid`` (started at ``started``, see ``procs``) exits.
        False when this host cannot watch it (no pidfd): the reader then checks on its own."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = None
        except (OSError, AttributeError):
            return False
        # Opened before the identity check: the pidfd is then surely the process we mean.
        if fd is None or not await asyncio.to_thread(procs.is_running, pid, started):
            if fd is not None:
                os.close(fd)
            self.writer_watched = self.writer_gone = True
            self.wake()
            return True
        self._pidfd, self._loop = fd, asyncio.get_running_loop()
        self._loop.add_reader(fd, self._exited)
        self.writer_watched = True
        return True

    def _exited(self) -> None:
        self._close_pidfd()
        self.writer_gone = True
        self.wake()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None and self._loop is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
        self._pidfd = None

    def close(self) -> None:
        self._close_pidfd()


class SpoolWatcher:
    """The backend's one inotify instance, started on first use in the running loop."""

    def __init__(self) -> None:
        self._inotify: inotify.Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirs: dict[int, set[Subscription]] = {}
        #: Why inotify is not used (said once in the log); None while it works.
        self.unavailable: str | None = None
        self._warned_limit = False
        #: How often the inotify descriptor was read (benchmarks count them).
        self.reads = 0

    def _start(self) -> inotify.Inotify | None:
        loop = asyncio.get_running_loop()
        if self._inotify is not None and self._loop is not loop:
            self.close()  # a new event loop (a test's): its readers start afresh
        if self._inotify is not None or self.unavailable is not None:
            return self._inotify
        try:
            self._inotify = inotify.Inotify()
        except inotify.InotifyError as exc:
            self.unavailable = str(exc)
            log.warning("%s; run output is polled instead (more CPU, more delay)", exc)
            return None
        self._loop = loop
        loop.add_reader(self._inotify.fd, self._readable)
        return self._inotify

    @contextlib.asynccontextmanager
    async def subscribe(
        self, directory: str | os.PathLike[str], name: str
    ) -> AsyncIterator[Subscription]:
        """Wake-ups for the file ``name`` in ``directory`` while the context is open."""
        sub = Subscription(name)
        watcher = self._start()
        wd: int | None = None
        if watcher is not None:
            try:
                wd = watcher.add_watch(directory, DIR_MASK)
            except inotify.InotifyError as exc:
                self._watch_failed(exc)
        if wd is not None:
            self._dirs.setdefault(wd, set()).add(sub)
            sub.watched = True
        try:
            yield sub
        finally:
            sub.close()
            subs = self._dirs.get(wd, set()) if wd is not None else set()
            if wd is not None and sub in subs:
                subs.discard(sub)
                if not subs:
                    del self._dirs[wd]
                    if self._inotify is not None and self._loop is asyncio.get_running_loop():
                        self._inotify.rm_watch(wd)

    def _watch_failed(self, exc: inotify.InotifyError) -> None:
        # A missing directory needs no word: its reader finds the spool missing and says so.
        if exc.errno == errno.ENOENT:
            return
        if exc.errno != errno.ENOSPC or not self._warned_limit:
            log.warning("%s; that run's output is polled instead", exc)
        self._warned_limit = self._warned_limit or exc.errno == errno.ENOSPC

    def _readable(self) -> None:
        self.reads += 1
        if self._inotify is None:
            return
        try:
            events = self._inotify.read()
        except OSError:
            log.exception("reading inotify events failed; waking every spool reader")
            events = [inotify.Event(-1, inotify.IN_Q_OVERFLOW, "")]
        self.dispatch(events)

    def dispatch(self, events: list[inotify.Event]) -> None:
        """Wake the readers the events concern; all of them after a queue overflow."""
        for event in events:
            if event.mask & inotify.IN_Q_OVERFLOW:
                for everyone in self._dirs.values():
                    for sub in everyone:
                        sub.wake()
                continue
            subs = self._dirs.get(event.wd)
            if not subs:
                continue
            if event.mask & _GONE:
                for sub in subs:
                    sub.wake()
                if event.mask & inotify.IN_IGNORED:  # the kernel dropped the watch
                    for sub in subs:
                        sub.watched = False
                    del self._dirs[event.wd]
                continue
            for sub in subs:
                if sub.name == event.name:
                    sub.wake()

    def close(self) -> None:
        if self._inotify is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
        self._inotify, self._loop = None, None
        self._dirs.clear()
