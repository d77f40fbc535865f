"""SQLite access: one writer thread fed by a queue, and a small pool of read connections.

Every write is a function of a ``sqlite3.Connection`` handed to the single writer thread, which
runs it inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) and settles the awaiting
coroutine's future with ``loop.call_soon_threadsafe``. Writes therefore never contend for the
write lock and never block the event loop. Reads run on a fixed pool of connections through a
dedicated executor; WAL lets them read a consistent snapshot while the writer writes.

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL``. A committed transaction is in the
WAL file before ``COMMIT`` returns, so it survives a crash of this process, ``kill -9``
included, which is the failure restarts must handle. The WAL is only fsynced at checkpoints, so
a power loss or an OS crash may lose the last few transactions (never corrupt the database).
``synchronous=FULL`` would close that window at the price of an fsync per commit.

A write job whose coroutine was cancelled before the writer reached it is skipped; once it has
started, it completes and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agentfarm.domain import errors

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5_000
DEFAULT_READERS = 4


class StoreClosedError(errors.AgentfarmError, RuntimeError):
    """The store was used after ``close()``."""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves) with our pragmas set."""
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,  # each connection is used by one thread at a time
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        conn.close()
        raise errors.ConfigurationError(
            f"SQLite could not put {path} in WAL mode (got {mode!r}); "
            "keep the data directory on a local filesystem"
        )


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled while the writer worked
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def full_error(exc: sqlite3.OperationalError, path: Path | None) -> errors.StorageFullError | None:
    """A StorageFullError saying what to do, when ``exc`` is SQLite's "database or disk is full"
    (the transaction was rolled back: what was stored before is intact)."""
    if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
        return None
    where = f" ({path.parent})" if path is not None else ""
    return errors.StorageFullError(
        f"the disk under agentfarm's data directory{where} is full, so nothing could be "
        "stored: free space there (remove old runs with `agentfarm rm`, or lower "
        "AGENTFARM_RETENTION_HOURS), then retry; what was stored before is intact"
    )


#: A file of this many bytes beside the database, given up when the disk is full so that the
#: ends of runs can still be stored (and made again once there is space).
RESERVE_BYTES = 4 << 20
RESERVE_NAME = ".agentfarm-reserve"


class Reserve:
    """The space kept back for a full disk (blocking; used on the writer thread)."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size
        #: The file is there (as far as this process knows): refill() is then free, which
        #: matters because the writer calls it after every commit.
        self._made = False
        self._next_try = 0.0

    def refill(self) -> None:
        """Make the file if it is missing (at most every few seconds while there is no room)."""
        if self._made:
            return
        now = time.monotonic()
        if now < self._next_try:
            return
        self._next_try = now + 10.0
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            self._made = True  # kept by an earlier start
            return
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, self.size)
            self._made = True
        except OSError:
            self.path.unlink(missing_ok=True)  # no room yet: try again later
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Give the space back to the disk; True if there was any to give."""
        self._made = False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


class _Writer:
    """The one thread that writes; owns its connection and closes it on the way out."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None) -> None:
        self._conn = conn
        self._path = path
        self.reserve = Reserve(path.with_name(RESERVE_NAME)) if path is not None else None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="agentfarm-store-writer", daemon=True
        )
        self._thread.start()

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put(_Job(fn, loop, future))
        return future

    def stop(self) -> None:
        """Finish the queued jobs, close the connection and end the thread (blocking)."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                if not job.future.cancelled():
                    self._execute(job)
        finally:
            self._conn.close()

    def _execute(self, job: _Job) -> None:
        conn = self._conn
        result: Any = None
        error: Exception | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = job.fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            error = full_error(exc, self._path) or exc
        except Exception as exc:  # handed over to the awaiting coroutine
            error = exc
        if error is None and self.reserve is not None:
            self.reserve.refill()
        # RuntimeError: the loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)


class _Readers:
    """A fixed pool of read-only connections, each borrowed by one executor thread at a time."""

    def __init__(self, conns: list[sqlite3.Connection]) -> None:
        self._all = conns
        self._free: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        for conn in conns:
            self._free.put(conn)
        # As many threads as connections, so a borrower never waits for a connection.
        self._executor = ThreadPoolExecutor(
            max_workers=len(conns), thread_name_prefix="agentfarm-store-read"
        )

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._free.get()
        try:
            return fn(conn)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._free.put(conn)

    def stop(self) -> None:
        """Wait for running reads, then close every connection (blocking)."""
        self._executor.shutdown(wait=True)
        for conn in self._all:
            conn.close()


class Database:
    """The writer and the readers of one SQLite file."""

    def __init__(self, path: Path, writer: _Writer, readers: _Readers) -> None:
        self.path = path
        self._writer = writer
        self._readers = readers
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, readers: int = DEFAULT_READERS) -> Database:
        if readers < 1:
            raise errors.InvalidInputError("the store needs at least one read connection")
        return await asyncio.to_thread(cls._open_sync, path, readers)

    @classmethod
    def _open_sync(cls, path: Path, readers: int) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it (SQLite would use 0644); the -wal and -shm files
        # SQLite makes next to it copy this mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conns: list[sqlite3.Connection] = []
        try:
            conns.append(connect(path))
            enable_wal(conns[0], path)
            conns.extend(connect(path, readonly=True) for _ in range(readers))
        except BaseException:
            for conn in conns:
                conn.close()
            raise
        return cls(path, _Writer(conns[0], path), _Readers(conns[1:]))

    @property
    def closed(self) -> bool:
        return self._closed

    async def release_reserve(self) -> bool:
        """Free the space kept back for a full disk (see :data:`RESERVE_BYTES`)."""
        reserve = self._writer.reserve
        return reserve is not None and await asyncio.to_thread(reserve.release)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in its own ``BEGIN IMMEDIATE`` transaction on the writer thread."""
        self._check_open()
        result: T = await self._writer.submit(fn)
        return result

    async def insert(
        self,
        sql: str,
        row: Sequence[object],
        conflict: Callable[[sqlite3.Connection, sqlite3.IntegrityError], Exception],
    ) -> None:
        """Insert ``row`` with ``sql``; a constraint it breaks raises ``conflict(conn, exc)``
        (a domain error saying which, and what to do)."""

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(sql, row)
            except sqlite3.IntegrityError as exc:
                raise conflict(conn, exc) from exc

        await self.write(insert)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a read-only connection in the reader pool."""
        self._check_open()
        return await self._readers.run(fn)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._writer.stop)
        await asyncio.to_thread(self._readers.stop)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the store for {self.path} is closed")
