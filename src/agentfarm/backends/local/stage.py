"""Make root-only paths reachable for the sandbox uid, in a private mount namespace.

bubblewrap runs as the unprivileged sandbox uid, and it resolves every bind source,
including ``--bind-fd`` ones (0.8 calls realpath on ``/proc/self/fd/N``), with that uid's
permissions. A data directory under /root (0700), or a source repository there, is then out
of reach. So the launcher child, still root, opens every source, enters a private mount
namespace, opens every source (a descriptor from before the unshare would belong to the
host's namespace, and mount(2) refuses it), mounts a tmpfs on ``STAGE`` (hiding what is
there, hence the descriptors) and bind-mounts each source below it; bubblewrap then
binds from the staged paths. The host's mount table never changes, and the staging tmpfs
vanishes with the sandbox.

Runs in ``preexec_fn`` of the single-threaded monitor, between fork and exec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

#: Always present on a Linux host and never needed by the launcher itself.
STAGE = "/tmp"  # noqa: S108

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        try:  # glibc's name; ``find_library`` runs ``ldconfig -p`` (some ms)
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so", use_errno=True)
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def staged_path(index: int) -> str:
    return f"{STAGE}/af-{index}"


def load() -> None:
    """Load libc before fork, so the child does not have to."""
    _c()


def stage(sources: list[str]) -> None:
    """Bind each source path to :func:`staged_path` of its index.

    Only for a root child process that will exec bubblewrap right after.
    """
    libc = _c()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Keep our mounts from propagating back into the host's namespace.
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    fds = [_open(s) for s in sources]
    _check(
        libc.mount(b"tmpfs", STAGE.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755"),
        "mount tmpfs",
    )
    for index, fd in enumerate(fds):
        _bind(libc, fd, staged_path(index))


def _open(source: str) -> int:
    return os.open(source, os.O_PATH | os.O_CLOEXEC)


def _bind(libc: ctypes.CDLL, fd: int, target: str) -> None:
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
    magic = f"/proc/self/fd/{fd}".encode()
    _check(libc.mount(magic, target.encode(), None, MS_BIND | MS_REC, None), "bind mount")
    # The sandbox must not inherit a descriptor into a root-only directory.
    os.close(fd)
