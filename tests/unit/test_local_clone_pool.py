"""The local backend's pool of ready clones (``clone_pool``), on real git: a claimed clone is
what a clone made at the claim would be, one clone goes to one run, a pool of 0 does
nothing, and nothing of the pool outlives the backend or an earlier server."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentfarm.backends.local import clone_pool

IDENT = ["-c", "user.name=t", "-c", "user.email=t@example.com"]


def run_git(repo: Path, *args: str, input_text: str | None = None) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *IDENT, *args],
        check=True,
        capture_output=True,
        input=None if input_text is None else input_text.encode(),
    )
    return out.stdout.decode().strip()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    repo = tmp_path / "src"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README").write_text("hello\n")
    run_git(repo, "add", "README")
    run_git(repo, "commit", "-q", "-m", "init")
    run_git(repo, "branch", "old-feature")
    return repo


@pytest.fixture(autouse=True)
def _no_refill_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clone_pool, "REFILL_DELAY", 0)


async def filled(pool: clone_pool.ClonePool, key: clone_pool.Key, count: int) -> None:
    """Claim once (a miss that starts the refill) and wait for ``count`` ready clones."""
    for _ in range(500):
        if len(pool._entries.get(key, [])) >= count:
            return
        if not pool._filling and key not in pool._entries:
            assert await pool.claim(key, pool.root.parent / "unused", "x") is None
        await asyncio.sleep(0.01)
    raise AssertionError(f"the pool has {len(pool._entries.get(key, []))} clones, not {count}")


def refs_of(workspace: Path) -> str:
    return run_git(workspace, "for-each-ref", "--format=%(objectname) %(refname)")


def refs_of_a_clone_made_now(source: Path, where: Path, branch: str) -> str:
    """What a claimed clone's refs must be: those of a clone made now, on ``branch``."""
    subprocess.run(["git", "clone", "-q", "--shared", str(source), str(where)], check=True)
    run_git(where, "checkout", "-q", "-b", branch)
    return refs_of(where)


async def test_a_claim_is_at_the_source_commit_made_after_the_pool_was_filled(
    tmp_path: Path, source: Path
) -> None:
    pool = clone_pool.ClonePool(tmp_path / "pool", 1)
    await pool.start()
    key = pool.key(str(source), None)
    assert key is not None
    await filled(pool, key, 1)
    # The source moves on after the clone was made: a commit, a new branch, a deleted one,
    # a tag.
    (source / "README").write_text("hello again\n")
    run_git(source, "commit", "-q", "-am", "second")
    run_git(source, "branch", "new-feature")
    run_git(source, "branch", "-D", "old-feature")
    run_git(source, "tag", "v1")
    head = run_git(source, "rev-parse", "HEAD")

    workspace = tmp_path / "run" / "workspace"
    workspace.parent.mkdir()
    start = await pool.claim(key, workspace, "agentfarm/r1")
    assert start == head
    assert run_git(workspace, "symbolic-ref", "HEAD") == "refs/heads/agentfarm/r1"
    assert run_git(workspace, "rev-parse", "HEAD") == head
    assert (workspace / "README").read_text() == "hello again\n"
    assert run_git(workspace, "status", "--porcelain") == ""
    # Refs as a clone made now has them (plus the run's branch).
    assert refs_of(workspace) == refs_of_a_clone_made_now(
        source, tmp_path / "fresh", "agentfarm/r1"
    )
    await pool.close()


async def test_an_unchanged_source_needs_no_ref_update(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's branch, made at the base the clone copied while the source's refs are read,
    is all a claim of an unchanged source takes: one git process (the source's refs, read
    from the reserve on), the branch and HEAD written as git writes them."""
    pool = clone_pool.ClonePool(tmp_path / "pool", 1)
    await pool.start()
    key = pool.key(str(source), "main")
    assert key is not None
    await filled(pool, key, 1)
    commands: list[tuple[str, Path]] = []
    real_git = clone_pool.git.git

    async def spy(*args: str, **kwargs: Any) -> str:
        commands.append((args[0], kwargs.get("cwd")))
        return await real_git(*args, **kwargs)

    monkeypatch.setattr(clone_pool.git, "git", spy)
    workspace = tmp_path / "workspace"
    assert await pool.claim(key, workspace, "agentfarm/r2") == run_git(source, "rev-parse", "main")
    # (The pool's refill clones meanwhile, elsewhere.)
    claimed = [c for c in commands if c[1] in (source, workspace)]
    assert claimed == [("for-each-ref", source)]
    assert run_git(workspace, "symbolic-ref", "HEAD") == "refs/heads/agentfarm/r2"
    assert run_git(workspace, "status", "--porcelain") == ""
    assert not (workspace / ".git" / "HEAD.lock").exists()
    assert refs_of(workspace) == refs_of_a_clone_made_now(
        source, tmp_path / "fresh", "agentfarm/r2"
    )
    await pool.close()


def test_the_runs_branch_is_written_as_git_writes_it(tmp_path: Path, source: Path) -> None:
    """By hand, the branch is the same file git's ``update-ref`` makes, and git reads it."""
    ours, gits = tmp_path / "ours", tmp_path / "gits"
    for clone in (ours, gits):
        subprocess.run(["git", "clone", "-q", "--shared", str(source), str(clone)], check=True)
    commit = run_git(source, "rev-parse", "main")
    assert clone_pool._write_branch_and_head(ours / ".git", "agentfarm/r1", commit)
    run_git(gits, "update-ref", "--stdin", input_text=f"create refs/heads/agentfarm/r1 {commit}\n")
    run_git(gits, "symbolic-ref", "HEAD", "refs/heads/agentfarm/r1")
    for name in ("refs/heads/agentfarm/r1", "HEAD"):
        assert (ours / ".git" / name).read_bytes() == (gits / ".git" / name).read_bytes()
    assert refs_of(ours) == refs_of(gits)
    assert not list((ours / ".git" / "refs" / "heads" / "agentfarm").glob("*.lock"))
    assert run_git(ours, "status", "--porcelain", "--branch") == "## agentfarm/r1"


@pytest.mark.parametrize(
    ("case", "branch", "commit"),
    [
        ("reftable", "agentfarm/r1", "a" * 40),
        ("plain", "agentfarm/bad..name", "a" * 40),
        ("plain", "-agentfarm", "a" * 40),
        ("plain", "agentfarm/r1", "not-a-commit"),
        ("plain", "agentfarm/r1", "A" * 40),
        ("loose", "agentfarm/r1", "a" * 40),
        ("loose parent", "agentfarm/r1", "a" * 40),
        ("loose child", "agentfarm", "a" * 40),
        ("packed", "agentfarm/r1", "a" * 40),
        ("packed parent", "agentfarm/r1", "a" * 40),
        ("packed child", "agentfarm", "a" * 40),
    ],
)
def test_a_branch_git_must_make_is_left_to_it(
    tmp_path: Path, case: str, branch: str, commit: str
) -> None:
    """Another ref storage, a name or commit git would refuse, a name taken whole or as a
    directory (loose or packed): nothing is written there, and git makes it (or says why)."""
    git_dir = tmp_path / ".git"
    heads = git_dir / "refs" / "heads"
    heads.mkdir(parents=True)
    (git_dir / "HEAD").write_text("ref: refs/heads/main\n")
    taken = "b" * 40
    if case == "reftable":
        (git_dir / "reftable").mkdir()
    elif case == "loose":
        (heads / "agentfarm").mkdir()
        (heads / "agentfarm" / "r1").write_text(f"{taken}\n")
    elif case == "loose parent":
        (heads / "agentfarm").write_text(f"{taken}\n")
    elif case == "loose child":
        (heads / "agentfarm").mkdir()
        (heads / "agentfarm" / "x").write_text(f"{taken}\n")
    elif case.startswith("packed"):
        ref = {
            "packed": "agentfarm/r1",
            "packed parent": "agentfarm",
            "packed child": "agentfarm/x",
        }
        lines = ["# pack-refs with: peeled fully-peeled sorted ", f"{taken} refs/heads/{ref[case]}"]
        (git_dir / "packed-refs").write_text("\n".join(lines) + "\n")
    before = sorted(str(p.relative_to(git_dir)) for p in git_dir.rglob("*"))
    assert not clone_pool._write_branch_and_head(git_dir, branch, commit)
    assert sorted(str(p.relative_to(git_dir)) for p in git_dir.rglob("*")) == before
    assert (git_dir / "HEAD").read_text() == "ref: refs/heads/main\n"


async def test_the_source_is_read_from_the_reserve_on_and_a_failed_read_means_a_clone(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reserved entry's source read is already under way (beside the launch's other work);
    where git cannot read the source, the claimed workspace goes and the launch clones."""
    pool = clone_pool.ClonePool(tmp_path / "pool", 1)
    await pool.start()
    key = pool.key(str(source), None)
    assert key is not None
    await filled(pool, key, 1)

    async def unreadable(_source: Path) -> clone_pool.SourceState:
        raise clone_pool.git.GitError("fatal: not a git repository")

    monkeypatch.setattr(clone_pool, "source_state", unreadable)
    entry = pool.reserve(key)
    assert entry is not None and isinstance(entry.source_now, asyncio.Task)
    workspace = tmp_path / "workspace"
    assert pool.place(entry, workspace)
    assert await pool.settle(key, entry, workspace, "agentfarm/r1") is None
    assert not workspace.exists()
    await pool.close()


async def test_a_source_read_cancelled_under_a_claim_means_a_clone_not_a_cancelled_launch(
    tmp_path: Path, source: Path
) -> None:
    """The pool's close cancels its source reads; a claim that was waiting for one returns
    None (the launch clones) rather than raising a cancellation it was never sent."""
    pool = clone_pool.ClonePool(tmp_path / "pool", 1)
    await pool.start()
    key = pool.key(str(source), None)
    assert key is not None
    await filled(pool, key, 1)
    entry = pool.reserve(key)
    assert entry is not None and entry.source_now is not None
    entry.source_now.cancel()
    workspace = tmp_path / "workspace"
    assert pool.place(entry, workspace)
    assert await pool.settle(key, entry, workspace, "agentfarm/r1") is None
    assert not workspace.exists()
    await pool.close()


def test_head_is_left_to_git_in_a_repository_without_ref_files(tmp_path: Path) -> None:
    git_dir = tmp_path / ".git"
    (git_dir / "reftable").mkdir(parents=True)
    (git_dir / "HEAD").write_text("ref: refs/heads/.invalid\n")
    assert not clone_pool._point_head(git_dir, "agentfarm/r1")
    assert (git_dir / "HEAD").read_text() == "ref: refs/heads/.invalid\n"


async def test_a_source_whose_head_moved_is_cloned_afresh(tmp_path: Path, source: Path) -> None:
    pool = clone_pool.ClonePool(tmp_path / "pool", 1)
    await pool.start()
    key = pool.key(str(source), None)
    assert key is not None
    await filled(pool, key, 1)
    run_git(source, "checkout", "-q", "old-feature")
    workspace = tmp_path / "workspace"
    assert await pool.claim(key, workspace, "agentfarm/r3") is None
    assert not workspace.exists()  # the launch clones into it
    await pool.close()


async def test_two_claims_never_get_the_same_clone(tmp_path: Path, source: Path) -> None:
    pool = clone_pool.ClonePool(tmp_path / "pool", 2)
    await pool.start()
    key = pool.key(str(source), None)
    assert key is not None
    await filled(pool, key, 2)
    spaces = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    starts = await asyncio.gather(*(pool.claim(key, ws, f"agentfarm/{ws.name}") for ws in spaces))
    # Two ready clones for three claims: two taken, one miss (that launch clones).
    assert sorted(s is None for s in starts) == [False, False, True]
    taken = [ws for ws, s in zip(spaces, starts, strict=True) if s is not None]
    inodes = {(ws / ".git").stat().st_ino for ws in taken}
    assert len(inodes) == 2
    for ws in taken:
        assert run_git(ws, "rev-parse", "--abbrev-ref", "HEAD") == f"agentfarm/{ws.name}"
    await pool.close()


async def test_a_pool_of_zero_does_nothing(tmp_path: Path, source: Path) -> None:
    pool = clone_pool.ClonePool(tmp_path / "pool", 0)
    await pool.start()
    key = pool.key(str(source), None)
    assert key is not None
    assert await pool.claim(key, tmp_path / "workspace", "agentfarm/r4") is None
    await asyncio.sleep(0.05)
    assert not (tmp_path / "pool").exists()
    await pool.close()


async def test_remote_sources_are_not_pooled() -> None:
    assert clone_pool.ClonePool.key("https://example.com/x.git", None) is None
    assert clone_pool.ClonePool.key("git@example.com:x.git", "main") is None


async def test_an_earlier_servers_clones_are_never_used_and_close_removes_all(
    tmp_path: Path, source: Path
) -> None:
    root = tmp_path / "pool"
    stale = root / "7" / "workspace"
    stale.mkdir(parents=True)
    (stale / "half-made").write_text("")
    pool = clone_pool.ClonePool(root, 1)
    await pool.start()
    assert not root.exists() or list(root.iterdir()) == []
    key = pool.key(str(source), None)
    assert key is not None
    await filled(pool, key, 1)
    assert len(list(root.iterdir())) == 1
    await pool.close()
    assert not root.exists()
    # Closed: no claim, no refill.
    assert await pool.claim(key, tmp_path / "late", "agentfarm/r5") is None
    await asyncio.sleep(0.05)
    assert not root.exists()


async def test_a_pool_not_started_claims_nothing(tmp_path: Path, source: Path) -> None:
    """A backend used without a server (no ``astart``) clones as it always did."""
    pool = clone_pool.ClonePool(tmp_path / "pool", 2)
    key = pool.key(str(source), None)
    assert key is not None
    assert await pool.claim(key, tmp_path / "workspace", "agentfarm/r6") is None
    await asyncio.sleep(0.05)
    assert not (tmp_path / "pool").exists()
    await pool.close()


async def test_the_source_state_names_heads_branch_and_none_when_detached(source: Path) -> None:
    """One ``for-each-ref`` gives the refs and the branch HEAD names (``%(HEAD)``)."""
    state = await clone_pool.source_state(source)
    assert state.head == "refs/heads/main"
    commit = run_git(source, "rev-parse", "HEAD")
    assert state.refs == {"refs/heads/main": commit, "refs/heads/old-feature": commit}
    run_git(source, "checkout", "-q", "--detach")
    detached = await clone_pool.source_state(source)
    assert detached.head is None
    assert detached.refs == state.refs


async def test_a_clone_that_cannot_take_the_runs_branch_is_discarded(
    tmp_path: Path, source: Path
) -> None:
    """A branch git refuses leaves neither the entry nor the claimed workspace (the launch
    then clones, and git says why)."""
    pool = clone_pool.ClonePool(tmp_path / "pool", 1)
    await pool.start()
    key = pool.key(str(source), None)
    assert key is not None
    await filled(pool, key, 1)
    entry = pool._entries[key][-1].path
    workspace = tmp_path / "workspace"
    assert await pool.claim(key, workspace, "agentfarm/bad..name") is None
    assert not entry.exists()
    assert not workspace.exists()
    await pool.close()


def owners(tree: Path) -> set[tuple[int, int]]:
    found = set()
    for parent, dirs, files in os.walk(tree):
        for name in [".", *dirs, *files]:
            st = os.lstat(os.path.join(parent, name))
            found.add((st.st_uid, st.st_gid))
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands clones to another uid")
@pytest.mark.parametrize("base_moved", [False, True])
async def test_an_owned_pool_hands_clones_over_ahead_and_at_the_claim(
    tmp_path: Path, source: Path, base_moved: bool
) -> None:
    """A pooled clone is the sandbox uid's while it waits (in a directory only root enters)
    and every file of the claimed one is, whatever the claim's git wrote (the tree too when
    the base moved)."""
    owner = (61000, 61000)
    pool = clone_pool.ClonePool(tmp_path / "pool", 1, owner)
    await pool.start()
    key = pool.key(str(source), None)
    assert key is not None
    await filled(pool, key, 1)
    entry = pool._entries[key][-1].path
    assert owners(entry / "workspace") == {owner}
    assert entry.stat().st_uid == 0 and stat.S_IMODE(entry.stat().st_mode) == 0o700
    run_git(source, "branch", "came-home")
    if base_moved:
        (source / "README").write_text("hello again\n")
        run_git(source, "commit", "-q", "-am", "second")
    workspace = tmp_path / "workspace"
    start = await pool.claim(key, workspace, "agentfarm/r7")
    assert start == run_git(source, "rev-parse", "HEAD")
    assert owners(workspace) == {owner}
    assert run_git(workspace, "-c", "safe.directory=*", "status", "--porcelain") == ""
    await pool.close()
