"""A finished run's changes, read with host git from its workspace: its branch against the
commit it started from (recorded at launch).

Only after the agent has exited: its ``.git`` is made safe again first (``git.sanitize``, as
before the branch is brought home), and every call disables hooks, external diff drivers and
text conversions. File names and the patch are the agent's text: callers escape them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agentfarm.backends.local import git
from agentfarm.backends.local.handle import GIT_STATE
from agentfarm.domain import diffs, errors, launch, models

#: The file list of a huge change is cut too (its text, not only its length in entries).
LIST_LIMIT = 4 * 1024 * 1024


async def run_diff(run: models.Run, run_dir: Path, *, limit: int) -> diffs.RunDiff:
    workspace = run_dir / "workspace"
    branch = run.branch or launch.branch_name(run.id)
    try:
        state = json.loads(await asyncio.to_thread((run_dir / GIT_STATE).read_text))
        if not await asyncio.to_thread((workspace / ".git").is_dir):
            raise FileNotFoundError(workspace)
    except (OSError, ValueError):
        raise errors.NotFoundError(
            f"run {run.id} has no workspace any more (removed after it ended, or never made); "
            f"its branch {branch} is in the repository"
        ) from None
    # The branch the host recorded at launch (the agent cannot change it), else the run's.
    branch = str(state.get("branch") or branch)
    try:
        await asyncio.to_thread(git.sanitize, workspace, state["config"], state["alternates"])
        start = state.get("start") or f"refs/remotes/origin/{run.spec.base_branch or 'HEAD'}"
        trusted = (workspace, workspace / ".git")
        base = (
            await git.git("merge-base", start, f"refs/heads/{branch}", cwd=workspace,
                          trusted=trusted, limit=60)
        ).strip()  # fmt: skip
        span = (f"{base}..refs/heads/{branch}", "--")
        flags = ("diff", "--no-color", "--no-ext-diff", "--no-textconv", "-M")
        numstat, cut_list = await git.git_head(
            *flags, "--numstat", "-z", *span, cwd=workspace, trusted=trusted,
            max_bytes=LIST_LIMIT,
        )  # fmt: skip
        names, _ = await git.git_head(
            *flags, "--name-status", "-z", *span, cwd=workspace, trusted=trusted,
            max_bytes=LIST_LIMIT,
        )  # fmt: skip
        patch, truncated = await git.git_head(
            *flags, "--patch", *span, cwd=workspace, trusted=trusted, max_bytes=limit
        )
    except git.GitError as exc:
        raise errors.ConflictError(f"the changes of run {run.id} cannot be read: {exc}") from None
    files = parse(numstat, names, cut=cut_list)
    many = cut_list or len(files) > diffs.FILES_LIMIT
    return diffs.RunDiff(
        base=base, base_branch=run.spec.base_branch, branch=branch,
        files=files[: diffs.FILES_LIMIT], files_truncated=many,
        additions=sum(f.additions for f in files), deletions=sum(f.deletions for f in files),
        patch=patch, truncated=truncated, limit=limit,
    )  # fmt: skip


def _numstat(text: str) -> list[tuple[str, str, str | None, str]]:
    """``(added, deleted, old_path, path)`` from ``--numstat -z``: ``A\tD\tpath\0``, or for a
    rename or copy ``A\tD\t\0old\0new\0``; ``-`` counts for a binary file."""
    parts = text.split("\0")
    found: list[tuple[str, str, str | None, str]] = []
    i = 0
    while i < len(parts) and parts[i]:
        fields = parts[i].split("\t", 2)
        if len(fields) != 3:
            break
        added, deleted, path = fields
        if path:
            found.append((added, deleted, None, path))
            i += 1
        elif i + 2 < len(parts) and parts[i + 2]:
            found.append((added, deleted, parts[i + 1], parts[i + 2]))
            i += 3
        else:
            break
    return found


def _statuses(text: str) -> list[str]:
    """The status letters of ``--name-status -z``: ``M\0path\0``, ``R100\0old\0new\0``."""
    parts = text.split("\0")
    found: list[str] = []
    i = 0
    while i + 1 < len(parts) and parts[i]:
        found.append(parts[i])
        i += 3 if parts[i][:1] in ("R", "C") else 2
    return found


def parse(numstat: str, names: str, *, cut: bool = False) -> list[diffs.FileChange]:
    """One change per file from git's ``--numstat -z`` and ``--name-status -z`` (same order);
    ``cut``: the output was cut short, so its last entry may be partial and is dropped."""
    if cut:
        numstat = numstat[: numstat.rfind("\0") + 1]
    statuses = _statuses(names)
    changes = []
    for index, (added, deleted, old, path) in enumerate(_numstat(numstat)):
        binary = added == "-"
        letter = statuses[index] if index < len(statuses) else ""
        changes.append(
            diffs.FileChange(
                path=path,
                old_path=old,
                status=diffs.file_status(letter),
                binary=binary,
                additions=int(added) if added.isdigit() else 0,
                deletions=int(deleted) if deleted.isdigit() else 0,
            )
        )
    return changes
