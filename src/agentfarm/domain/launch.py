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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Every run works on a branch of its own: ``agentfarm/<run id>``.
BRANCH_PREFIX = "agentfarm/"
#: After a turn a person interrupted, the agent waits this long at least for a message (the
#: run goes on: an interrupt ends the turn, not the run), whatever the follow-up window says.
INTERRUPTED_WINDOW_SECONDS = 600.0
#: The notice a backend's process owner (the local monitor, the pod's entrypoint) writes when
#: a turn has ended and the agent waits for a follow-up: this prefix, then
#: ``{"seconds": N}``. The supervisor turns it into a ``run.waiting`` event.
WAITING_NOTICE = "agentfarm.waiting "


def branch_name(run_id: str) -> str:
    return f"{BRANCH_PREFIX}{run_id}"


_BRANCH_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|//|@\{|/\.|\.lock/")


def valid_branch(name: str) -> bool:
    """A branch name git takes (``git check-ref-format --branch``) and that no command line
    could read as an option: at most 255 characters, no space, control character or any of
    ``~^:?*[\\``, no ``..``, ``//`` or ``@{``, no component starting with ``.`` or ending
    with ``.lock``, not starting with ``-`` or ``/``, not ending with ``/`` or ``.``."""
    return (
        0 < len(name) <= 255
        and name not in ("@", "HEAD")
        and not name.startswith(("-", "/", "."))
        and not name.endswith(("/", ".", ".lock"))
        and _BRANCH_BAD.search(name) is None
    )


def continues(base_branch: str | None, branch: str) -> bool:
    """A follow-up: the run starts from its own branch and keeps working on it (no new
    branch; its commits go back on top, fast-forward only)."""
    return base_branch == branch


@dataclass(frozen=True)
class GitAuth:
    """A git token for the URLs under ``prefix`` (``scheme://host[:port]/``), sent as HTTP
    basic auth with ``user``. ``env_name`` is the variable the agent image's entrypoint
    expects it in (Kubernetes). Never logged (``token`` is left out of repr) and never given
    to an agent: git gets it through :meth:`env` only."""

    prefix: str
    user: str
    token: str = field(repr=False)
    env_name: str

    @property
    def basic(self) -> str:
        return _b64(f"{self.user}:{self.token}".encode())

    def env(self) -> dict[str, str]:
        """Git's configuration through the environment (``GIT_CONFIG_COUNT``/``_KEY_n``/
        ``_VALUE_n``, git >= 2.31): an ``Authorization`` header for URLs under the prefix.
        Not an ``insteadOf`` rewrite to a URL with the token: git hands the URL it fetches
        from to its remote helper as an argument and quotes it in errors; a header is in
        neither, nor in .git/config."""
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{self.prefix}.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {self.basic}",
        }

    def secrets(self) -> dict[str, str]:
        """What to mask wherever git's words are shown."""
        return {self.env_name: self.token, f"{self.env_name}_BASIC": self.basic}


def waiting_notice(seconds: float) -> str:
    return WAITING_NOTICE + json.dumps({"seconds": round(seconds, 3)})


def waiting_seconds(notice: str) -> float | None:
    """The seconds of a :data:`WAITING_NOTICE`; None for any other notice."""
    if not notice.startswith(WAITING_NOTICE):
        return None
    try:
        seconds = json.loads(notice[len(WAITING_NOTICE) :]).get("seconds")
    except (ValueError, AttributeError):
        return None
    ok = isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0
    return float(seconds) if ok else None


def is_replay(line: bytes) -> bool:
    """A stdout line echoing a stdin message the agent took (see ``AgentCommand.replays``):
    a top-level ``isReplay: true`` on a ``user`` line, not the words in some tool's output."""
    if b'"isReplay"' not in line:
        return False
    try:
        body = json.loads(line)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("type") == "user" and body.get("isReplay") is True


def failed_on_api(line: bytes) -> bool:
    """A turn's end that says the model's API failed (Claude's ``result`` with
    ``terminal_reason: api_error``: a usage limit, an outage). No follow-up window opens after
    it: the run ends (or is parked until the limit resets) at once."""
    if b'"api_error"' not in line:
        return False
    try:
        body = json.loads(line)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("terminal_reason") == "api_error"


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
    #: The agent echoes each stdin message as it takes it, as a stdout line ``{"type": "user",
    #: "isReplay": true, ...}`` (Claude's ``--replay-user-messages``). Claude answers a message
    #: sent while a tool runs in the running turn, not in a turn of its own, so a turn's end
    #: does not mean one message answered: with replays, stdin stays open after a turn's end
    #: while a message is still unread. Without: each message is answered by one turn's end.
    replays: bool = False
    #: Seconds stdin stays open after a turn ends with nothing queued (a follow-up within
    #: them starts a new turn); 0: it closes at once and the run ends on that result.
    followup_window: float = 0.0
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
            "followup_window": self.followup_window,
            "replays": self.replays,
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
            followup_window=float(raw.get("followup_window", 0.0)),
            replays=bool(raw.get("replays", False)),
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
    #: The token of the spec's ``git_token_secret`` for its repository, if it names one.
    #: Not part of :meth:`to_json`: what the local monitor (and so the sandbox) reads.
    git_auth: GitAuth | None = field(default=None, repr=False)

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
