"""A finished run's changes from its workspace, on real git: the files with their counts
(renames, binaries, hostile names), the patch against the commit the run started from, cut at
the limit; the agent's repository settings are not obeyed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agentfarm.backends.local import diff as local_diff
from agentfarm.backends.local import git, rundir
from agentfarm.domain import errors, launch, models

HOSTILE = "<img src=x onerror=alert(1)>\nline.txt"


def sh(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def source(tmp_path: Path) -> Path:
    repo = tmp_path / "source"
    repo.mkdir()
    sh(repo, "init", "-q", "-b", "main")
    (repo / "keep.txt").write_text("one\ntwo\nthree\n")
    (repo / "old-name.txt").write_text("".join(f"line {i}\n" for i in range(40)))
    (repo / "gone.txt").write_text("bye\n")
    sh(repo, "add", ".")
    sh(repo, "commit", "-q", "-m", "start")
    return repo


async def launched(tmp_path: Path, source: Path) -> tuple[models.Run, Path]:
    """What the local backend's launch leaves: a clone on the run's branch, and its git state
    (with the start commit) beside it."""
    run = models.Run(spec=models.AgentSpec(repo=str(source), prompt="p"))
    run.branch = launch.branch_name(run.id)
    run_dir = tmp_path / "runs" / run.id
    workspace = run_dir / "workspace"
    run_dir.mkdir(parents=True)
    await git.clone(str(source), workspace, None)
    await git.new_branch(workspace, run.branch)
    state = {"branch": run.branch, "start": await git.head(workspace), "continues": False}
    rundir.save_git_state(run_dir, workspace, state)
    return run, run_dir


async def test_the_changes_of_a_run_against_its_start(tmp_path: Path, source: Path) -> None:
    run, run_dir = await launched(tmp_path, source)
    ws = run_dir / "workspace"
    # Meanwhile the source moves on: that is not the run's change.
    (source / "keep.txt").write_text("changed upstream\n")
    sh(source, "commit", "-q", "-am", "upstream")
    (ws / "keep.txt").write_text("one\n2\nthree\nfour\n")
    sh(ws, "mv", "old-name.txt", "new-name.txt")
    sh(ws, "rm", "-q", "gone.txt")
    (ws / HOSTILE).write_text("<script>alert(1)</script>\n")
    (ws / "blob.bin").write_bytes(bytes(range(256)) * 4)
    sh(ws, "add", "-A")
    sh(ws, "commit", "-q", "-m", "the agent's work")
    # The agent's repository settings would run a program for the diff: never obeyed.
    marker = tmp_path / "pwned"
    with (ws / ".git" / "config").open("a") as fh:
        fh.write(f'[diff]\n\texternal = "touch {marker}"\n[core]\n\tpager = "touch {marker}"\n')
        fh.write(f'[diff "x"]\n\ttextconv = "touch {marker}"\n')
    (ws / ".git" / "info").mkdir(exist_ok=True)
    (ws / ".git" / "info" / "attributes").write_text("* diff=x\n")

    diff = await local_diff.run_diff(run, run_dir, limit=100_000)
    assert not marker.exists()
    assert diff.branch == run.branch and len(diff.base) == 40
    by_path = {f.path: f for f in diff.files}
    assert set(by_path) == {"keep.txt", "new-name.txt", "gone.txt", HOSTILE, "blob.bin"}
    keep = by_path["keep.txt"]
    assert (keep.status, keep.additions, keep.deletions) == ("modified", 2, 1)
    renamed = by_path["new-name.txt"]
    assert (renamed.status, renamed.old_path, renamed.additions) == ("renamed", "old-name.txt", 0)
    assert by_path["gone.txt"].status == "deleted" and by_path["gone.txt"].deletions == 1
    assert by_path[HOSTILE].status == "added" and by_path[HOSTILE].additions == 1
    assert by_path["blob.bin"].binary and by_path["blob.bin"].additions == 0
    assert (diff.additions, diff.deletions) == (3, 2)
    assert "+<script>alert(1)</script>" in diff.patch and "changed upstream" not in diff.patch
    assert not diff.truncated and not diff.files_truncated


async def test_a_huge_patch_is_cut_at_the_limit(tmp_path: Path, source: Path) -> None:
    run, run_dir = await launched(tmp_path, source)
    ws = run_dir / "workspace"
    (ws / "big.txt").write_text("".join(f"generated line {i}\n" for i in range(200_000)))
    sh(ws, "add", "-A")
    sh(ws, "commit", "-q", "-m", "big")
    diff = await local_diff.run_diff(run, run_dir, limit=4096)
    assert diff.truncated and len(diff.patch.encode()) <= 4096
    assert diff.files[0].additions == 200_000  # the counts are whole


async def test_no_workspace_or_no_branch_says_so(tmp_path: Path, source: Path) -> None:
    run, run_dir = await launched(tmp_path, source)
    sh(run_dir / "workspace", "checkout", "-q", "main")
    sh(run_dir / "workspace", "branch", "-q", "-D", run.branch or "")
    with pytest.raises(errors.ConflictError, match="cannot be read"):
        await local_diff.run_diff(run, run_dir, limit=4096)
    subprocess.run(["rm", "-rf", str(run_dir / "workspace")], check=True)
    with pytest.raises(errors.NotFoundError, match="no workspace any more"):
        await local_diff.run_diff(run, run_dir, limit=4096)


def test_git_output_with_odd_names_parses() -> None:
    numstat = "1\t2\ta\tb.txt\0-\t-\tbin\0" + "0\t0\t\0old\nname\0new\0" + "5\t0\tpart"
    names = "M\0a\tb.txt\0A\0bin\0R100\0old\nname\0new\0A\0part"
    changes = local_diff.parse(numstat, names, cut=True)  # the last entry was cut short
    assert [(c.path, c.old_path, c.status, c.binary) for c in changes] == [
        ("a\tb.txt", None, "modified", False),
        ("bin", None, "added", True),
        ("new", "old\nname", "renamed", False),
    ]
