"""The control plane's handle on one local run: read its spool, talk to its monitor."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agentfarm.backends.base import BranchOutcome, Record
from agentfarm.backends.local import cgroups, exits, git, monitor_spec, procs, spool, spoolwatch
from agentfarm.domain import errors, launch, models

GIT_STATE = "git-state.json"
#: Seconds a monitor that did not take a stop request is given to be on its way out.
STOP_SETTLE = 5.0


def read_identity(run_dir: Path) -> tuple[int, int] | None:
    """The monitor's (pid, start time) from monitor.json (blocking)."""
    try:
        body = json.loads((run_dir / monitor_spec.MONITOR_JSON).read_text())
        return int(body["pid"]), int(body["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kill_orphans(run_dir: Path, run_id: str) -> None:
    """Kill what a dead monitor left running (blocking): the sandbox and its cgroups."""
    try:
        body = json.loads((run_dir / monitor_spec.SANDBOX_JSON).read_text())
        processes = [(int(p["pid"]), int(p["start_time"])) for p in body["processes"]]
    except (OSError, ValueError, KeyError, TypeError):
        processes = []
    for pid, started in processes:
        if procs.is_running(pid, started):
            # SIGKILL to the namespace's init takes every process of the sandbox with it.
            procs.kill_quietly(pid)
    cgroups.remove_leftovers(run_id)


def monitor_running(run_dir: Path) -> bool:
    identity = read_identity(run_dir)
    return identity is not None and procs.is_running(*identity)


class LocalHandle:
    """A run of the local backend, through its run directory and its monitor."""

    def __init__(
        self,
        run: models.Run,
        run_dir: Path,
        git_auth: launch.GitAuth | None = None,
        watcher: spoolwatch.SpoolWatcher | None = None,
    ) -> None:
        self.run_id = run.id
        self.run = run
        self.run_dir = run_dir
        #: The run's git token (for the push); git gets it through its environment only.
        self.git_auth = git_auth
        self.branch_outcome: BranchOutcome | None = None
        self._identity: tuple[int, int] | None = None
        #: The backend's one inotify instance (None: ``spool.follow`` makes its own).
        self._watcher = watcher

    async def alive(self) -> bool:
        if self._identity is None:
            self._identity = await asyncio.to_thread(read_identity, self.run_dir)
            if self._identity is None:
                return False
        return await asyncio.to_thread(procs.is_running, *self._identity)

    async def records(self, after: int) -> AsyncIterator[Record]:
        watcher = self._watcher or spoolwatch.SpoolWatcher()
        try:
            async with watcher.subscribe(self.run_dir, monitor_spec.SPOOL) as wakeups:
                if await self.alive() and self._identity is not None:
                    await wakeups.watch_process(*self._identity)
                path = self.run_dir / monitor_spec.SPOOL
                async for record in spool.follow(path, after, self.alive, wakeups=wakeups):
                    if record.exit is not None and record.exit.lost:
                        await asyncio.to_thread(kill_orphans, self.run_dir, self.run_id)
                    yield record
        finally:
            if watcher is not self._watcher:
                watcher.close()

    async def exited_within(self, seconds: float) -> bool:
        """Whether the monitor exits within ``seconds`` (a pidfd, no polling)."""
        if not await self.alive() or self._identity is None:
            return True
        return await exits.exited_within(*self._identity, seconds)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request to the monitor's control socket; raises BackendError if unreachable."""
        # Connect through a directory descriptor: unix socket paths are limited to ~108 bytes.
        try:
            dirfd = os.open(self.run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise errors.BackendError(f"run {self.run_id} has no run directory: {exc}") from None
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(f"/proc/self/fd/{dirfd}/{monitor_spec.CONTROL_SOCK}"),
                5,
            )
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 10)
        except (OSError, TimeoutError) as exc:
            raise errors.BackendError(
                f"cannot reach the monitor of run {self.run_id} ({exc}); is it still running?"
            ) from None
        finally:
            os.close(dirfd)
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        try:
            reply: dict[str, Any] = json.loads(line)
        except ValueError:
            raise errors.BackendError(f"the monitor of run {self.run_id} hung up") from None
        if not reply.get("ok"):
            raise errors.BackendError(f"run {self.run_id}: {reply.get('error', 'refused')}")
        return reply

    async def send(self, data: bytes) -> None:
        await self.request({"op": "send", "data": base64.b64encode(data).decode()})

    async def interrupt(self) -> None:
        await self.request({"op": "interrupt"})

    async def stop(self, grace: float) -> None:
        # The monitor writes the run command's interrupt to stdin first.
        message = {"op": "stop", "grace": grace}
        try:
            await self.request(message)
        except errors.BackendError:
            # A monitor whose agent has just ended closes its control socket and exits (it only
            # syncs its spool first): a request in that moment is reset. Gone then, or within
            # moments, the sandbox went with it (--die-with-parent): there is nothing to stop.
            if not await self.exited_within(STOP_SETTLE):
                raise

    async def finalize(self) -> list[str]:
        # After the exit frame the monitor only fsyncs and closes: give it a moment.
        if not await self.exited_within(5.0):
            raise errors.BackendError(f"run {self.run_id} is still running; stop it first")
        workspace = self.run_dir / "workspace"
        branch = self.run.branch or launch.branch_name(self.run_id)
        try:
            state = json.loads(await asyncio.to_thread((self.run_dir / GIT_STATE).read_text))
            branch = str(state.get("branch") or branch)
        except (OSError, ValueError) as exc:
            return [f"the branch {branch} was not brought back: the workspace is gone ({exc})"]
        start = state.get("start") if isinstance(state.get("start"), str) else None
        try:
            notices = await asyncio.to_thread(
                git.sanitize, workspace, state["config"], state["alternates"]
            )
        except git.GitError as exc:
            self._outcome(branch, start, None, 0, error=str(exc))
            return [f"the branch {branch} was not brought back: {exc}"]
        except (OSError, KeyError) as exc:
            return [f"the branch {branch} was not brought back: the workspace is gone ({exc})"]
        repo = self.run.spec.repo
        head: str | None = None
        commits = 0
        if start is not None:  # runs launched before the start was recorded: push as then
            try:
                head = await git.head(workspace, f"refs/heads/{branch}")
                commits = await git.count(workspace, start, head)
            except git.GitError:
                why = f"the agent deleted the branch {branch} (or made it unreadable)"
                self._outcome(branch, start, None, 0, error=why)
                return [*notices, f"the branch {branch} was not brought back: {why}"]
            if commits == 0 and not git.is_local(repo):
                self._outcome(branch, start, head, 0)  # the run.branch event says so
                return notices
        try:
            if git.is_local(repo):
                force = not state.get("continues")
                await git.fetch_back(git.local_path(repo), workspace, branch, force=force)
            else:
                await git.push(repo, workspace, branch, self.git_auth)
        except git.GitError as exc:
            self._outcome(branch, start, head, commits, error=str(exc))
            where = "into the source repository" if git.is_local(repo) else "to the remote"
            return [*notices, f"the branch {branch} could not be copied {where}: {exc}"]
        self._outcome(branch, start, head, commits, pushed=True)
        return notices

    def _outcome(
        self,
        branch: str,
        start: str | None,
        head: str | None,
        commits: int,
        *,
        pushed: bool = False,
        error: str | None = None,
    ) -> None:
        if start is not None:
            self.branch_outcome = BranchOutcome(branch, start, head, commits, pushed, error)

    async def discard_output(self) -> None:
        """Delete the spool: once the run's events are stored its raw lines are a second copy.
        Nothing reads it again (a restart resumes only runs that have not ended)."""
        await asyncio.to_thread((self.run_dir / monitor_spec.SPOOL).unlink, missing_ok=True)
