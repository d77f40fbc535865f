"""One launch, in one shape: what the supervisor hands a backend, and what the local backend's
monitor reads back on the other side of the process boundary.

The supervisor builds a :class:`LaunchSpec` once per launch: the agent adapter's
:class:`AgentCommand` (argv with the binary's name first, environment, first stdin bytes, when
to close stdin, how to send a follow-up and how to interrupt) and the credentials it resolved.
Backends take it as it is; the local backend serializes it into its monitor's spec.

Standard library only, on purpose: the monitor runs ``python -S`` on every launch and must not
import pydantic (about 100 ms).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Every run works on a branch of its own: ``agentfarm/<run id>``.
BRANCH_PREFIX = "agentfarm/"


def branch_name(run_id: str) -> str:
    return f"{BRANCH_PREFIX}{run_id}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class Followup:
    """How a follow-up message reaches the agent: ``prefix + text as a JSON string + suffix``
    on its stdin (a JSON-lines protocol; the text is escaped, so it cannot break the line)."""

    prefix: bytes
    suffix: bytes

    def encode(self, text: str) -> bytes:
        return self.prefix + json.dumps(text).encode() + self.suffix


@dataclass(frozen=True)
class AgentCommand:
    """What a backend executes. ``argv[0]`` is the binary's name (``claude``): the backend
    resolves it (a path on this host, the image's PATH in a pod)."""

    argv: Sequence[str]
    env: Mapping[str, str]
    stdin: bytes = b""
    #: Close the agent's stdin after the first stdout line whose top-level ``type`` is one of
    #: these (the agent has answered and nothing else is queued): the process then exits.
    close_stdin_after: tuple[str, ...] = ()
    #: Close the agent's stdin as soon as ``stdin`` is written (a program that reads its
    #: prompt to end of file and takes nothing more).
    close_stdin_when_written: bool = False
    #: Written to the agent's stdin when the run is stopped, before the signals.
    interrupt: bytes = b""
    #: None: this agent takes no follow-up messages.
    followup: Followup | None = None
    #: A driver put before the resolved binary: ``("python3", "-c", SOURCE)`` runs the agent
    #: once per turn (Codex). Its first item is ``python3``: the backend puts the interpreter
    #: it has inside the sandbox there. The binary and the rest of argv follow it.
    runner: tuple[str, ...] = ()

    @property
    def binary(self) -> str:
        return self.argv[0]

    def with_program(self, program: str, python: str = "python3") -> list[str]:
        """The command line to execute: the runner (its interpreter as ``python``), then
        ``program`` (the binary as resolved) and the rest of argv."""
        runner = [python, *self.runner[1:]] if self.runner else []
        return [*runner, program, *self.argv[1:]]

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv),
            "env": dict(self.env),
            "stdin": _b64(self.stdin),
            "close_stdin_after": list(self.close_stdin_after),
            "close_stdin_when_written": self.close_stdin_when_written,
            "interrupt": _b64(self.interrupt),
            "followup": None
            if self.followup is None
            else [_b64(self.followup.prefix), _b64(self.followup.suffix)],
            "runner": list(self.runner),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AgentCommand:
        followup = raw.get("followup")
        return cls(
            argv=list(raw["argv"]),
            env=dict(raw["env"]),
            stdin=base64.b64decode(raw.get("stdin", "")),
            close_stdin_after=tuple(raw.get("close_stdin_after", ())),
            close_stdin_when_written=bool(raw.get("close_stdin_when_written", False)),
            interrupt=base64.b64decode(raw.get("interrupt", "")),
            followup=None
            if followup is None
            else Followup(base64.b64decode(followup[0]), base64.b64decode(followup[1])),
            runner=tuple(raw.get("runner", ())),
        )


@dataclass(frozen=True)
class LaunchSpec:
    """One run's launch: built once by the supervisor, handed to the backend unchanged."""

    run_id: str
    branch: str
    command: AgentCommand
    #: Model credentials (and, for backends that clone remotely, git tokens), resolved once
    #: per launch; never logged (left out of repr).
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def of(
        cls, run_id: str, command: AgentCommand, credentials: Mapping[str, str] | None = None
    ) -> LaunchSpec:
        return cls(run_id, branch_name(run_id), command, dict(credentials or {}))

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "branch": self.branch,
            "command": self.command.to_json(),
            "credentials": dict(self.credentials),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LaunchSpec:
        return cls(
            run_id=raw["run_id"],
            branch=raw["branch"],
            command=AgentCommand.from_json(raw["command"]),
            credentials=dict(raw.get("credentials", {})),
        )
