"""Files of a run directory, and the host commands that make or remove them."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path

from agentfarm.backends.local import git, monitor_spec, sandbox
from agentfarm.backends.local.handle import GIT_STATE, kill_orphans
from agentfarm.domain import errors

#: Top-level links into /usr, real top-level directories, /etc entries (``root_layout``).
Layout = tuple[list[str], list[str], tuple[list[str], list[tuple[str, str]]]]


def root_layout() -> Layout:
    """Top-level names that are symlinks into /usr, real top-level directories to bind, and
    the allowed /etc entries this host has (to bind, and symlinks into /usr to make)."""
    links, dirs = [], []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            if os.readlink(path).lstrip("/").startswith("usr/"):
                links.append(name)
        elif os.path.isdir(path):
            dirs.append(path)
    return links, dirs, sandbox.etc_entries()


def forget_process(run_dir: Path, run_id: str) -> None:
    """Before a new agent process in an existing run directory: what is left of the last
    one goes (its events are stored; a new spool starts at cursor 0)."""
    kill_orphans(run_dir, run_id)
    for name in (monitor_spec.SPOOL, monitor_spec.MONITOR_JSON, monitor_spec.SANDBOX_JSON):
        (run_dir / name).unlink(missing_ok=True)


def save_git_state(run_dir: Path, workspace: Path, branch: Mapping[str, object]) -> list[Path]:
    """Keep what the host wrote into .git (restored before host git runs there again), and
    the run's branch: its name, the commit it started from, whether it continues an
    existing branch (outside the workspace: the agent cannot change them)."""
    config = (workspace / ".git" / "config").read_text()
    alternates_file = workspace / ".git" / "objects" / "info" / "alternates"
    alternates = alternates_file.read_text() if alternates_file.exists() else None
    path = run_dir / GIT_STATE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"config": config, "alternates": alternates, **branch}, fh)
    return git.alternates(workspace)


async def chown(owner: str, *paths: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "chown", "-R", "--no-dereference", owner, *map(str, paths),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise errors.LaunchError(f"cannot hand the workspace to the sandbox user: {err.decode()}")


async def remove_tree(path: Path) -> None:
    """``rm -rf``: the agent shapes the workspace, and shutil.rmtree recurses once per level
    (a tree nested deeper than Python's recursion limit made it raise). Directories the agent
    made unreadable (a non-root server is their owner, not root) are opened up first."""
    for attempt in range(2):
        if attempt:
            await run_quietly("chmod", "-R", "u+rwx", "--", str(path))
        err = await run_quietly("rm", "-rf", "--one-file-system", "--", str(path))
        if err is None:
            return
    raise errors.BackendError(f"cannot remove {path}: {err}")


async def run_quietly(*argv: str) -> str | None:
    """Run a command; None if it succeeded, else what it said on stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    return None if proc.returncode == 0 else err.decode("utf-8", "replace").strip()
