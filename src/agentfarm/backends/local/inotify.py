"""inotify(7) through libc with ctypes: an instance, its watches and its events.

A tiny wrapper of ``inotify_init1``, ``inotify_add_watch`` and ``inotify_rm_watch`` (no
dependency): the descriptor is non-blocking, so an asyncio loop can ``add_reader`` it and
:meth:`Inotify.read` drains what is queued without ever blocking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: ``struct inotify_event``: wd, mask, cookie, len, then ``len`` bytes of NUL-padded name.
_EVENT = struct.Struct("iIII")
#: Room for many events per read (each is 16 bytes plus a short name).
READ_SIZE = 64 * 1024

_SYSCTL = "/proc/sys/fs/inotify/"


class InotifyError(OSError):
    """inotify is unavailable or a limit was reached; the message says which and what to do."""


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    name: str


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c") or "libc.so.6"
    return ctypes.CDLL(name, use_errno=True)


def _limit(name: str) -> str:
    try:
        with open(_SYSCTL + name) as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


class Inotify:
    """One inotify instance (one descriptor, however many watches)."""

    def __init__(self) -> None:
        try:
            self._libc = _libc()
            init1 = self._libc.inotify_init1
        except (OSError, AttributeError) as exc:
            raise InotifyError(errno.ENOSYS, f"inotify is not available here: {exc}") from None
        fd = init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            if code == errno.EMFILE:
                why = (
                    "the limit of inotify instances per user is reached "
                    f"(fs.inotify.max_user_instances = {_limit('max_user_instances')}); "
                    "raise it with `sysctl -w fs.inotify.max_user_instances=N`"
                )
            else:
                why = os.strerror(code)
            raise InotifyError(code, f"cannot create an inotify instance: {why}")
        self.fd: int = fd

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        raw = os.fsencode(path)
        wd: int = self._libc.inotify_add_watch(self.fd, raw, ctypes.c_uint32(mask))
        if wd >= 0:
            return wd
        code = ctypes.get_errno()
        if code == errno.ENOSPC:
            why = (
                "the limit of inotify watches per user is reached "
                f"(fs.inotify.max_user_watches = {_limit('max_user_watches')}); "
                "raise it with `sysctl -w fs.inotify.max_user_watches=N`"
            )
        else:
            why = os.strerror(code)
        raise InotifyError(code, f"cannot watch {os.fsdecode(raw)}: {why}")

    def rm_watch(self, wd: int) -> None:
        # EINVAL: the kernel already dropped it (its directory was removed); nothing to do.
        self._libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[Event]:
        """Every queued event; an empty list when none is queued (never blocks)."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return events
            if not data:
                return events
            events += parse(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse(data: bytes) -> list[Event]:
    events: list[Event] = []
    pos = 0
    while pos + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
        start = pos + _EVENT.size
        raw = data[start : start + length].split(b"\0", 1)[0]
        events.append(Event(wd, mask, os.fsdecode(raw)))
        pos = start + length
    return events
