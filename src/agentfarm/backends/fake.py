"""An in-memory backend for tests of everything above the backends.

It "runs" a scripted list of output lines instead of a process. The agents and their
records live in a :class:`FakeWorld`, the stand-in for the machine: :meth:`FakeBackend.restarted`
gives a fresh backend object over the same world, as a restarted control plane makes a new
backend that finds the agents still running. The conformance suite in
tests/integration/test_backend_conformance.py runs against it and the real backends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from agentfarm.backends.base import BranchOutcome, ExitInfo, LaunchInfo, Record, RecordKind
from agentfarm.domain import diffs, errors, launch, models
from agentfarm.domain.launch import GitAuth, LaunchSpec


@dataclass(frozen=True)
class Step:
    kind: RecordKind
    data: bytes = b""
    delay: float = 0.0
    exit: ExitInfo | None = None


Script = Callable[[models.Run, launch.AgentCommand], list[Step]]
#: What a finished fake run's branch did (the ``run.branch`` event), by run; None: nothing.
Outcome = Callable[[models.Run], BranchOutcome | None]


def claude_like_script(run: models.Run, command: launch.AgentCommand) -> list[Step]:
    """A short, successful Claude-Code-shaped conversation echoing the prompt."""
    session = f"fake-session-{run.id}"
    lines: list[dict[str, object]] = [
        {"type": "system", "subtype": "init", "session_id": session, "model": "fake-model",
         "tools": ["Bash", "Write"], "cwd": "/workspace", "permissionMode": "bypassPermissions"},
        {"type": "assistant", "session_id": session, "message": {
            "id": "msg_1", "content": [{"type": "text", "text": f"Working on: {run.prompt}"}]}},
        {"type": "result", "subtype": "success", "is_error": False, "result": "done",
         "num_turns": 1, "duration_ms": 5, "duration_api_ms": 3, "total_cost_usd": 0.0012,
         "session_id": session, "usage": {"input_tokens": 10, "output_tokens": 5}},
    ]  # fmt: skip
    steps = [Step("started", json.dumps({"pid": 0}).encode())]
    steps += [Step("stdout", json.dumps(line).encode()) for line in lines]
    steps.append(Step("exit", exit=ExitInfo(exit_code=0)))
    return steps


@dataclass
class _FakeRun:
    records: list[Record] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    stdin: list[bytes] = field(default_factory=list)
    interrupts: int = 0
    task: asyncio.Task[None] | None = None
    stop_requested: bool = False
    finalized: bool = False
    output_discarded: bool = False
    run: models.Run | None = None

    def append(self, kind: RecordKind, data: bytes = b"", exit: ExitInfo | None = None) -> None:
        self.records.append(Record(len(self.records) + 1, kind, data, exit))
        self.changed.set()

    @property
    def done(self) -> bool:
        return bool(self.records) and self.records[-1].kind == "exit"


class FakeHandle:
    def __init__(self, run_id: str, state: _FakeRun, outcome: Outcome | None = None) -> None:
        self.run_id = run_id
        self._state = state
        self._outcome = outcome
        self.branch_outcome: BranchOutcome | None = None

    async def records(self, after: int) -> AsyncIterator[Record]:
        index = after
        while True:
            while index < len(self._state.records):
                record = self._state.records[index]
                index += 1
                yield record
                if record.kind == "exit":
                    return
            self._state.changed.clear()
            await self._state.changed.wait()

    async def send(self, data: bytes) -> None:
        if self._state.done:
            raise errors.ConflictError("the agent has exited; it cannot take more input")
        self._state.stdin.append(data)

    async def interrupt(self) -> None:
        if self._state.done:
            raise errors.BackendError("the agent has exited; there is no turn to interrupt")
        self._state.interrupts += 1

    async def stop(self, grace: float) -> None:
        if self._state.done:
            return
        self._state.stop_requested = True
        if self._state.task is not None:
            self._state.task.cancel()
        self._state.append("exit", exit=ExitInfo(exit_code=None, signal=15, stopped=True))

    async def finalize(self) -> list[str]:
        self._state.finalized = True
        if self._outcome is not None and self._state.run is not None:
            self.branch_outcome = self._outcome(self._state.run)
        return []

    async def discard_output(self) -> None:
        self._state.output_discarded = True


@dataclass
class FakeWorld:
    """What outlives a control plane: the scripted agents, and what each was launched with
    (for tests to look at)."""

    script: Script
    runs: dict[str, _FakeRun] = field(default_factory=dict)
    #: What each run was launched with, as the supervisor built it.
    launches: dict[str, launch.LaunchSpec] = field(default_factory=dict)
    #: Ids of the runs ``cleanup`` was called for, in order.
    cleaned: list[str] = field(default_factory=list)
    fail_launch: str | None = None
    #: Notices every launch reports (as a real backend's launch info carries them).
    launch_notices: list[str] = field(default_factory=list)
    #: What each run's branch did at the end (pushed, how many commits); None: no event.
    outcome: Outcome | None = None
    #: What ``diff`` answers per run (tests set it); a run without one has no workspace.
    run_diffs: dict[str, diffs.RunDiff] = field(default_factory=dict)
    #: Ids of the runs resumed in a new process, in order.
    resumes: list[str] = field(default_factory=list)


class FakeBackend:
    name = "fake"

    def __init__(
        self, script: Script = claude_like_script, *, world: FakeWorld | None = None
    ) -> None:
        self.world = world or FakeWorld(script)

    def restarted(self) -> FakeBackend:
        """A new backend object over the same agents, as after a control-plane restart."""
        return FakeBackend(world=self.world)

    # The world, seen from any of its backend objects.
    @property
    def script(self) -> Script:
        return self.world.script

    @script.setter
    def script(self, value: Script) -> None:
        self.world.script = value

    @property
    def fail_launch(self) -> str | None:
        return self.world.fail_launch

    @fail_launch.setter
    def fail_launch(self, value: str | None) -> None:
        self.world.fail_launch = value

    @property
    def runs(self) -> dict[str, _FakeRun]:
        return self.world.runs

    @property
    def cleaned(self) -> list[str]:
        return self.world.cleaned

    @property
    def commands(self) -> dict[str, launch.AgentCommand]:
        return {run_id: spec.command for run_id, spec in self.world.launches.items()}

    @property
    def secrets(self) -> dict[str, dict[str, str]]:
        return {run_id: dict(spec.credentials) for run_id, spec in self.world.launches.items()}

    async def launch(
        self, run: models.Run, spec: launch.LaunchSpec
    ) -> tuple[FakeHandle, LaunchInfo]:
        if self.fail_launch:
            raise errors.LaunchError(self.fail_launch)
        state = _FakeRun(run=run.model_copy(update={"branch": spec.branch}))
        self.runs[run.id] = state
        self.world.launches[run.id] = spec
        state.task = asyncio.create_task(self._play(state, self.script(run, spec.command)))
        return FakeHandle(run.id, state, self.world.outcome), LaunchInfo(
            branch=spec.branch, workspace=f"/fake/{run.id}", notices=list(self.world.launch_notices)
        )

    async def resume(self, run: models.Run, spec: LaunchSpec) -> tuple[FakeHandle, LaunchInfo]:
        """A new scripted process for the same run: records start again from cursor 1."""
        previous = self.runs.get(run.id)
        if previous is not None and not previous.done:
            raise errors.ConflictError(f"run {run.id} still has an agent running")
        if self.fail_launch:
            raise errors.LaunchError(self.fail_launch)
        state = _FakeRun(run=run.model_copy(update={"branch": spec.branch}))
        self.runs[run.id] = state
        self.world.launches[run.id] = spec
        self.world.resumes.append(run.id)
        state.task = asyncio.create_task(self._play(state, self.script(run, spec.command)))
        return FakeHandle(run.id, state, self.world.outcome), LaunchInfo(
            branch=spec.branch, workspace=f"/fake/{run.id}"
        )

    async def _play(self, state: _FakeRun, steps: list[Step]) -> None:
        for step in steps:
            if step.delay:
                await asyncio.sleep(step.delay)
            if state.done:
                return
            state.append(step.kind, step.data, step.exit)

    async def attach(
        self, run: models.Run, *, git_auth: GitAuth | None = None
    ) -> tuple[FakeHandle, LaunchInfo]:
        state = self.runs.get(run.id)
        if state is None:
            state = _FakeRun(run=run)
            state.append("exit", exit=ExitInfo(exit_code=None, lost=True, error="unknown run"))
            self.runs[run.id] = state
        branch = run.branch or launch.branch_name(run.id)
        info = LaunchInfo(branch=branch, workspace=f"/fake/{run.id}")
        return FakeHandle(run.id, state, self.world.outcome), info

    def lose(self, run_id: str) -> None:
        """Simulate the agent vanishing (its monitor killed while the server was down)."""
        state = self.runs[run_id]
        if state.task is not None:
            state.task.cancel()
        state.append(
            "exit", exit=ExitInfo(exit_code=None, lost=True, error="the agent disappeared")
        )

    async def diff(self, run: models.Run, *, limit: int) -> diffs.RunDiff:
        found = self.world.run_diffs.get(run.id)
        if found is None:
            raise errors.ConflictError(f"the fake backend keeps no workspace for run {run.id}")
        return found

    async def cleanup(self, run: models.Run) -> None:
        self.cleaned.append(run.id)
        self.runs.pop(run.id, None)

    async def aclose(self) -> None:
        """Like real agents, scripted ones outlive the control plane; see :meth:`shutdown`."""

    async def shutdown(self) -> None:
        """End every scripted agent (test teardown)."""
        for state in self.runs.values():
            if state.task is not None:
                state.task.cancel()
