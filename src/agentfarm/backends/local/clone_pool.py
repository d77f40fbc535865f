"""Ready clones of local source repositories, so that a launch need not clone.

A ``git clone --shared`` costs a launch about 40 ms on this kind of machine (one ``openat``
or ``mkdir`` per file). The pool keeps up to ``size`` clones per (source, base branch), made
in the background after a launch of that repository, and hands one to the next launch:

- **Fresh at the claim.** A clone made earlier may be behind its source. From the reserve on,
  the source's branches, tags and the branch its HEAD names are read (one ``for-each-ref``,
  beside the launch's other work). The claim moves the clone into the run's directory
  (:meth:`ClonePool.place`, a rename) and makes the run's branch at the base commit the
  clone copied (its HEAD then names it; written as git writes them, no process, where the
  clone keeps its refs in files), then compares the source's state with what the clone
  recorded. Where they differ (the source moved on
  since the clone was made), one more ``update-ref --stdin`` moves the run's branch and sets
  the clone's remote-tracking refs, tags and base branch to the source's (a base that moved
  also resets the clone's clean tree).
  No fetch is needed: a ``--shared`` clone reads every object of its source through its
  alternates. The run's branch is at the source's base commit, so the workspace is
  what a clone made at that moment would be. A source whose HEAD moved to another branch, or
  whose base branch is gone, is not patched up: the entry is discarded and the launch clones.
- **One run each.** An entry leaves the pool (:meth:`ClonePool.reserve`, an in-memory pop, no
  await in between) before it is renamed into the run's directory (an atomic ``rename`` on
  one filesystem); a rename that fails discards the entry.
- **Owned ahead.** With an ``owner`` (the sandbox uid, when the server runs as root) a clone is
  handed to it when it is made, in the background, inside a directory only root can enter;
  the claim then hands over only what its git commands wrote (under ``.git``, or the whole
  tree when the base moved), so a large tree's ``chown -R`` is off the launch's path.
- **Nothing left behind.** Entries live under ``<data dir>/pool/clones``, which is emptied
  when the backend starts (entries of an earlier server, possibly half made, are never used)
  and when it closes.

Only local sources are pooled (a remote clone would need the run's token to be refreshed
safely); follow-up runs, which continue an existing branch, clone as before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import shutil
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentfarm import tasks
from agentfarm.backends.local import git
from agentfarm.domain import launch

log = logging.getLogger(__name__)

#: A refill waits this long after the launch that emptied the pool: its clone would
#: otherwise compete for the CPU with the agent that is starting.
REFILL_DELAY = 1.0
#: Sources with pooled clones at most (the least recently launched one gives way).
MAX_SOURCES = 16
REMOTE = "refs/remotes/origin/"


@dataclass(frozen=True)
class SourceState:
    """What a clone copies from its source: the branch HEAD names (None: detached) and the
    commits of its branches (``refs/heads/...``) and tags."""

    head: str | None
    refs: dict[str, str] = field(hash=False)


@dataclass
class Entry:
    path: Path
    #: The branch the clone has checked out (its base) and the source's refs it copied.
    state: SourceState
    #: The object directories the clone reads through its alternates (a claim leaves them
    #: as they are): read when it is made, so a launch can send its spec before the claim.
    borrowed: list[Path] = field(default_factory=list)
    #: The source's state as a claim reads it, started when the entry is reserved (a git
    #: process, beside the launch's other work until the claim needs it); None when git
    #: cannot read it.
    source_now: asyncio.Task[SourceState | None] | None = field(default=None, repr=False)


Key = tuple[str, str]


class ClonePool:
    def __init__(self, root: Path, size: int, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.size = size
        #: (uid, gid) a claimed clone belongs to, every file of it (None: the server's).
        self.owner = owner
        self._entries: collections.OrderedDict[Key, list[Entry]] = collections.OrderedDict()
        self._filling: set[Key] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._numbers = itertools.count()
        self._started = False
        self._closed = False

    @staticmethod
    def key(repo: str, base_branch: str | None) -> Key | None:
        """The pool a run's clone comes from, or None when its source is not poolable."""
        if not git.is_local(repo):
            return None
        return str(git.local_path(repo)), base_branch or ""

    async def start(self) -> None:
        """Empty the pool's directory (what an earlier server left there is never used) and
        start pooling. Until then, and after :meth:`close`, every claim misses."""
        if self._started or self.size <= 0:
            return
        self._started = True
        await asyncio.to_thread(_remove, self.root)

    async def claim(self, key: Key, workspace: Path, branch: str) -> str | None:
        """Move a ready clone to ``workspace``, bring it to the source's current state and
        make ``branch`` at the base commit; the commit, or None (then the caller clones).
        Either way the pool is topped up afterwards."""
        entry = self.reserve(key)
        if entry is None or not await asyncio.to_thread(self.place, entry, workspace):
            return None
        return await self.settle(key, entry, workspace, branch)

    def reserve(self, key: Key) -> Entry | None:
        """A ready clone out of the pool, for :meth:`settle` (the pool is topped up)."""
        if self.size <= 0 or not self._started or self._closed:
            return None
        entries = self._entries.get(key)
        self._entries[key] = entries or []
        self._entries.move_to_end(key)
        entry = entries.pop() if entries else None
        if entry is not None:
            entry.source_now = self._look(key)
        self._refill(key)
        return entry

    def _look(self, key: Key) -> asyncio.Task[SourceState | None]:
        """Read the source's state for a claim (:func:`_read_source`), in a task of its own."""
        name = f"clone-pool-source-{key[0]}"
        return tasks.spawn(_read_source(Path(key[0])), name=name, into=self._tasks)

    @staticmethod
    def place(entry: Entry, workspace: Path) -> bool:
        """Move a reserved clone to ``workspace`` (blocking: a rename); False when it cannot
        (the entry is discarded)."""
        try:
            _move(entry.path, workspace)
        except OSError as exc:
            log.warning("clone pool: cannot take %s (%s); cloning instead", entry.path, exc)
            _remove(entry.path)
            return False
        return True

    @staticmethod
    def discard(entry: Entry) -> None:
        """A reserved clone the launch will not use (blocking)."""
        _remove(entry.path)

    async def settle(self, key: Key, entry: Entry, workspace: Path, branch: str) -> str | None:
        """The rest of :meth:`claim`, for an entry :meth:`reserve` gave and :meth:`place`
        moved to ``workspace``: the run's branch, and the source's state."""
        try:
            now = entry.source_now or self._look(key)
            start = await _refresh(now, key[1], workspace, entry.state, branch)
            if start is not None and self.owner is not None:
                # What git wrote as root: the tree too when the base moved (``_refresh``).
                whole = start != entry.state.refs.get(entry.state.head or "")
                await _hand_over(workspace, self.owner, whole=whole)
        except (git.GitError, OSError) as exc:
            log.warning("clone pool: refreshing a clone of %s failed (%s)", key[0], exc)
            start = None
        if start is None:
            await asyncio.to_thread(_remove, workspace)
        return start

    async def close(self) -> None:
        self._closed = True
        await tasks.stop(list(self._tasks))
        self._entries.clear()
        if self._started:
            await asyncio.to_thread(_remove, self.root)

    # --- filling ---------------------------------------------------------------------------
    def _refill(self, key: Key) -> None:
        if key in self._filling or self._closed:
            return
        self._filling.add(key)
        tasks.spawn(self._fill(key), name=f"clone-pool-{key[0]}", into=self._tasks)

    async def _fill(self, key: Key) -> None:
        try:
            await asyncio.sleep(REFILL_DELAY)
            while key in self._entries and len(self._entries[key]) < self.size:
                entry = await self._make(key)
                if entry is None or key not in self._entries:
                    if entry is not None:
                        await asyncio.to_thread(_remove, entry.path)
                    return
                self._entries[key].append(entry)
            while len(self._entries) > MAX_SOURCES:
                _, dropped = self._entries.popitem(last=False)
                for old in dropped:
                    await asyncio.to_thread(_remove, old.path)
        finally:
            self._filling.discard(key)

    async def _make(self, key: Key) -> Entry | None:
        path = self.root / str(next(self._numbers))
        await asyncio.to_thread(path.mkdir, parents=True, mode=0o700)
        workspace = path / "workspace"
        try:
            await git.clone(key[0], workspace, key[1] or None, background=True)
            state = await _clone_state(workspace)
            borrowed = await asyncio.to_thread(git.alternates, workspace)
            if self.owner is not None:
                await _hand_over(workspace, self.owner, whole=True, background=True)
        except git.GitError as exc:
            log.warning("clone pool: cannot clone %s (%s)", key[0], exc)
            await asyncio.to_thread(_remove, path)
            return None
        return Entry(path, state, borrowed)


async def source_state(source: Path) -> SourceState:
    """One git process (each costs the server's event loop a few ms to start): ``%(HEAD)``
    marks the branch HEAD names. A detached HEAD, or one naming a branch without commits,
    marks none: a claim without a base branch then clones afresh (``_refresh``)."""
    out = await git.git("for-each-ref", "--format=%(HEAD)%(objectname) %(refname)",
                        "refs/heads", "refs/tags", cwd=source, trusted=(source,))  # fmt: skip
    lines = out.splitlines()
    head = next((line.partition(" ")[2] for line in lines if line.startswith("*")), None)
    return SourceState(head, _parse_refs("\n".join(line[1:] for line in lines)))


async def _clone_state(workspace: Path) -> SourceState:
    """The source's state as the clone copied it (read from the clone: the source may have
    moved on while it was cloned)."""
    trusted = (workspace, workspace / ".git")
    out = await git.git("for-each-ref", "--format=%(objectname) %(refname)", "refs/remotes/origin",
                        "refs/tags", cwd=workspace, trusted=trusted)  # fmt: skip
    refs: dict[str, str] = {}
    for ref, sha in _parse_refs(out).items():
        if ref.startswith(REMOTE):
            if ref != REMOTE + "HEAD":
                refs["refs/heads/" + ref.removeprefix(REMOTE)] = sha
        else:
            refs[ref] = sha
    head = await git.git("symbolic-ref", "-q", "HEAD", cwd=workspace, trusted=trusted)
    return SourceState(head.strip(), refs)


def _parse_refs(text: str) -> dict[str, str]:
    refs = {}
    for line in text.splitlines():
        sha, _, ref = line.partition(" ")
        refs[ref] = sha
    return refs


async def _read_source(source: Path) -> SourceState | None:
    """:func:`source_state`, or None (said in the log) when git cannot read it."""
    try:
        return await source_state(source)
    except (git.GitError, OSError) as exc:
        log.warning("clone pool: cannot read the refs of %s (%s)", source, exc)
        return None


async def _refresh(
    source_now: Awaitable[SourceState | None],
    base: str,
    workspace: Path,
    had: SourceState,
    branch: str,
) -> str | None:
    """Make ``branch`` in a claimed clone at the source's base commit, with HEAD naming it,
    and bring the clone from the source's state it copied (``had``) to the source's state
    now (``source_now``, read meanwhile; see the module's docstring); that commit, or None
    when the clone cannot be patched up.

    The branch is made at the base the clone copied while the source's refs are read: most
    claims find the source as it was, and need nothing more. Not ``checkout -b``: that
    compares the index with every file of the tree, some 20 ms for 3,000 files, where the
    tree does not change (or changes by the reset below)."""
    base_ref = f"refs/heads/{base}" if base else had.head
    guess = None if base_ref is None else had.refs.get(base_ref)
    if base_ref is None or had.head != base_ref or guess is None:
        return None  # the clone has not the base checked out: nothing to patch up from
    now, made = await asyncio.gather(
        source_now, _start_branch(workspace, branch, guess), return_exceptions=True
    )
    if isinstance(made, BaseException):
        raise made
    if isinstance(now, asyncio.CancelledError):
        return None  # the read, not this claim, was cancelled (the pool closes): clone instead
    if isinstance(now, BaseException):
        raise now
    if now is None:
        return None
    start = now.refs.get(base_ref)
    if now.head != had.head and not base:
        return None  # the source's HEAD names another branch now, or none
    if start is None or any(_odd(ref) for ref in now.refs):
        return None
    moved = guess != start
    # One transaction: the run's branch and the base where the base moved, and only what
    # changed of the source's refs (a local source gains a branch with every run that
    # comes home).
    lines = []
    if moved:
        lines += [f"update refs/heads/{branch} {start} {guess}", f"update {base_ref} {start}"]
    if now.refs != had.refs:
        lines += [
            f"update {_copy(ref)} {sha}"
            for ref, sha in now.refs.items()
            if had.refs.get(ref) != sha
        ]
        lines += [f"delete {_copy(ref)}" for ref in had.refs.keys() - now.refs.keys()]
    trusted = (workspace, workspace / ".git")
    if lines:
        await git.git("update-ref", "--stdin", cwd=workspace, trusted=trusted,
                      stdin="".join(f"{line}\n" for line in lines))  # fmt: skip
    if moved:
        # The base moved since the clone was made: its clean tree follows the branch.
        await git.git("reset", "--quiet", "--hard", cwd=workspace, trusted=trusted)
    return start


async def _start_branch(workspace: Path, branch: str, commit: str) -> None:
    """Make ``branch`` at ``commit`` and point HEAD at it: by hand in a clone that keeps its
    refs in files (:func:`_write_branch`: a git process less on the launch's path), else
    with git (which checks the name)."""
    git_dir = workspace / ".git"
    trusted = (workspace, git_dir)
    if await asyncio.to_thread(_write_branch_and_head, git_dir, branch, commit):
        return
    await git.git("update-ref", "--stdin", cwd=workspace, trusted=trusted,
                  stdin=f"create refs/heads/{branch} {commit}\n")  # fmt: skip
    if not await asyncio.to_thread(_point_head, git_dir, branch):
        await git.git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=workspace,
                      trusted=trusted)  # fmt: skip


def _write_branch_and_head(git_dir: Path, branch: str, commit: str) -> bool:
    """:func:`_write_branch`, then :func:`_point_head` (one thread hop)."""
    return _write_branch(git_dir, branch, commit) and _point_head(git_dir, branch)


def _write_branch(git_dir: Path, branch: str, commit: str) -> bool:
    """What ``git update-ref --stdin`` writes for ``create refs/heads/<branch> <commit>`` in a
    clone that keeps its refs in files: the loose ref, written as git does (a lock file
    renamed into place). False where git must do it (having written nothing but perhaps
    directories above the ref): another ref storage (reftable), a name git would refuse, or
    one taken whole or as a directory, loose or in ``packed-refs``. No reflog entry is
    written: git starts the branch's log at its first update (``core.logAllRefUpdates``),
    and nothing of ours reads it."""
    if (
        not launch.valid_branch(branch)
        or len(commit) != 40
        or any(c not in "0123456789abcdef" for c in commit)
        or (git_dir / "reftable").exists()
    ):
        return False
    name = f"refs/heads/{branch}"
    with contextlib.suppress(FileNotFoundError):
        for line in (git_dir / "packed-refs").read_text().splitlines():
            if line.startswith(("#", "^")):
                continue
            ref = line.partition(" ")[2]
            if ref == name or ref.startswith(f"{name}/") or name.startswith(f"{ref}/"):
                return False
    path = git_dir / name
    if os.path.lexists(path):
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # fails on a loose ref in the way
        lock = path.with_name(f"{path.name}.lock")
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError:
        return False
    try:
        os.write(fd, f"{commit}\n".encode())
    finally:
        os.close(fd)
    os.rename(lock, path)
    return True


def _point_head(git_dir: Path, branch: str) -> bool:
    """What ``git symbolic-ref HEAD refs/heads/<branch>`` writes, without a process: in a
    repository that keeps its refs in files, HEAD is that one line (written as git does,
    to a lock file renamed over it). False for another ref storage (reftable), where git
    must do it."""
    if (git_dir / "reftable").exists():
        return False
    lock = git_dir / "HEAD.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"ref: refs/heads/{branch}\n".encode())
    finally:
        os.close(fd)
    os.rename(lock, git_dir / "HEAD")
    return True


def _copy(ref: str) -> str:
    """Where a clone keeps the source's ``ref``: its branches as remote-tracking refs."""
    return REMOTE + ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else ref


def _odd(ref: str) -> bool:
    """A ref name ``update-ref --stdin`` could misread (git never makes one)."""
    return not ref or any(c.isspace() or ord(c) < 32 for c in ref)


async def _hand_over(
    workspace: Path, owner: tuple[int, int], *, whole: bool, background: bool = False
) -> None:
    """Give ``workspace`` (or only its ``.git``, where the claim's git wrote) to ``owner``."""
    if not whole:
        await asyncio.to_thread(_own, workspace / ".git", owner)
        return
    proc = await asyncio.create_subprocess_exec(
        "chown", "-R", "--no-dereference", f"{owner[0]}:{owner[1]}", str(workspace),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    if background:
        with contextlib.suppress(OSError):  # it may have just ended
            os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise git.GitError(f"cannot hand the clone to the sandbox user: {err.decode().strip()}")


def _own(top: Path, owner: tuple[int, int]) -> None:
    """``chown -R`` in-process, for a small tree (a ``--shared`` clone's ``.git``)."""
    uid, gid = owner
    os.lchown(top, uid, gid)
    for parent, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            if (st.st_uid, st.st_gid) != owner:
                os.lchown(path, uid, gid)


def _move(entry: Path, workspace: Path) -> None:
    os.rename(entry / "workspace", workspace)
    with contextlib.suppress(OSError):  # left for the next start's clean-up
        os.rmdir(entry)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
