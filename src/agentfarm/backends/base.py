"""The interface every backend implements, and the records it yields.

A backend starts an agent command somewhere, hands back a :class:`RunHandle`, and can find
the agent again after the control plane restarts (:meth:`Backend.attach`). Output comes as
:class:`Record` objects carrying an opaque, increasing ``cursor``; the supervisor stores the
cursor in the same transaction as the events it produced, so a restarted server resumes with
``records(after=cursor)`` and nothing is lost or doubled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from agentfarm.domain import diffs, launch, models
from agentfarm.domain.launch import GitAuth

#: ``egress``: a connection the sandbox's egress proxy refused (JSON: host, port, reason).
RecordKind = Literal["stdout", "stderr", "notice", "started", "exit", "egress"]


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int | None
    signal: int | None = None
    #: The user asked to stop the run (the supervisor maps this to ``stopped``).
    stopped: bool = False
    #: The agent vanished without a trace (monitor gone, pod deleted): ``lost``.
    lost: bool = False
    oom_killed: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Record:
    cursor: int
    kind: RecordKind
    data: bytes = b""
    exit: ExitInfo | None = None


@dataclass(frozen=True)
class BranchOutcome:
    """Where a run's branch ended up, once its backend brought it home (pushed it to the
    remote, or fetched it back into a local source repository)."""

    branch: str
    #: The commit the run started from (its branch's head at launch).
    start: str
    #: The branch's head at the end; None when it could not be read.
    head: str | None
    #: Commits on the branch beyond ``start``.
    commits: int
    #: The branch reached the remote (or the local source repository).
    pushed: bool
    #: Why it did not (git's words, masked); None when it did or there was nothing to push.
    error: str | None = None

    def to_data(self) -> dict[str, object]:
        return {
            "branch": self.branch,
            "start": self.start,
            "head": self.head,
            "commits": self.commits,
            "pushed": self.pushed,
            "error": self.error,
        }


@dataclass
class LaunchInfo:
    """What the backend tells the supervisor about a launched run."""

    branch: str | None = None
    workspace: str | None = None
    notices: list[str] = field(default_factory=list)


class RunHandle(Protocol):
    run_id: str
    #: Set by :meth:`finalize` when the backend brought a branch home (else None).
    branch_outcome: BranchOutcome | None

    def records(self, after: int) -> AsyncIterator[Record]:
        """Every record with ``cursor > after``, following live output until the exit record."""
        ...

    async def send(self, data: bytes) -> None:
        """A follow-up for the agent's stdin: one more turn. BackendError (with the reason) when
        the agent no longer takes messages."""
        ...

    async def interrupt(self) -> None:
        """End the agent's running turn, not the run: its command's interrupt on stdin, after
        which the agent waits for a message. BackendError (with the reason) when no turn runs
        or the agent cannot be interrupted."""
        ...

    async def stop(self, grace: float) -> None:
        """Ask the agent to stop, SIGTERM, then kill everything after ``grace`` seconds."""
        ...

    async def finalize(self) -> list[str]:
        """After the exit record: bring results home (fetch/push the branch). Returns notices."""
        ...

    async def discard_output(self) -> None:
        """After the run's last events are stored: drop the raw output they were made from."""
        ...


class Backend(Protocol):
    name: str

    async def launch(
        self, run: models.Run, spec: launch.LaunchSpec
    ) -> tuple[RunHandle, LaunchInfo]:
        """Prepare a workspace and start ``spec``'s command (resolving its binary) with its
        credentials; raise LaunchError with a clear message. ``run`` carries the repository
        and this backend's settings (``run.spec.backend``)."""
        ...

    async def attach(
        self, run: models.Run, *, git_auth: GitAuth | None = None
    ) -> tuple[RunHandle, LaunchInfo]:
        """Find a run started before a restart; its records end with a lost exit if it is gone.
        The info is what :meth:`launch` would have said (branch, workspace), without notices.
        ``git_auth`` is the launch's git token, resolved again (for a push at the end)."""
        ...

    async def cleanup(self, run: models.Run) -> None:
        """Remove what the run left behind that is no longer needed."""
        ...

    async def diff(self, run: models.Run, *, limit: int) -> diffs.RunDiff:
        """An ended run's changes: its branch against the commit it started from, the patch
        cut after ``limit`` bytes. NotFoundError when its workspace is gone, ConflictError
        when this backend keeps none the control plane can read."""
        ...


@runtime_checkable
class Resumes(Protocol):
    """A backend that can start a new agent process for a run whose last one ended (parked
    for a usage limit, stopped after a stall), in the same workspace, branch and HOME.
    Its records start again from cursor 0."""

    async def resume(
        self, run: models.Run, spec: launch.LaunchSpec
    ) -> tuple[RunHandle, LaunchInfo]: ...


@runtime_checkable
class ContinuesEnded(Protocol):
    """A backend whose ended runs go on somewhere new when a person continues them, not where
    they ran (Kubernetes: the run's pod has gone; a new one gets the agent's session back).
    Without it, :class:`Resumes` starts a continued run's process as a parked run's."""

    async def continue_refusal(self, run: models.Run) -> str | None:
        """Why the ended ``run`` cannot be continued, saying what to do instead (None: it
        can)."""
        ...

    async def continue_ended(
        self, run: models.Run, spec: launch.LaunchSpec
    ) -> tuple[RunHandle, LaunchInfo]:
        """The ended run's next agent process: ``spec`` resumes its session."""
        ...


@runtime_checkable
class KnowsStart(Protocol):
    """A backend that can tell, after a restart, whether a run's agent process was ever
    started. A control plane killed in the middle of a launch leaves the run ``starting`` with
    nothing running: such a run is launched again instead of ending ``lost``."""

    async def started(self, run: models.Run) -> bool: ...
