"""The generic command agent: any program, its prompt on stdin or as its last argument.

Its output is not a protocol: each stdout line becomes an ``agent.text`` event and each stderr
line an ``agent.stderr`` event, and the exit code alone decides the status. It takes no
follow-ups and no model credentials (a program that needs a key gets it through the config's
``env`` or its own means); stop works as for every agent: the backend signals the sandbox's
processes, then kills them.
"""

from __future__ import annotations

from agentfarm.agents import base, capping
from agentfarm.agents.jsonlines import signal_name
from agentfarm.domain import errors, launch, models


class CommandAdapter:
    """Builds the command line from the config's ``command`` section (see the module
    docstring)."""

    name = "command"

    def build_command(
        self, spec: models.AgentSpec, *, base_url: str | None = None
    ) -> launch.AgentCommand:
        if spec.command is None:
            raise errors.InvalidInputError("the command agent needs a command: {argv: [...]}")
        argv = list(spec.command.argv)
        stdin = b""
        if spec.command.prompt == "argument":
            argv.append(spec.prompt)
        elif spec.command.prompt == "stdin":
            text = spec.prompt if spec.prompt.endswith("\n") else spec.prompt + "\n"
            stdin = text.encode()
        return launch.AgentCommand(
            argv=argv, env=dict(spec.env), stdin=stdin, close_stdin_when_written=True
        )

    def credential_names(self) -> tuple[str, ...]:
        return ()

    def new_parser(self) -> CommandParser:
        return CommandParser()


def _text(line: bytes) -> str:
    return capping.cap_text(line.decode("utf-8", "replace").rstrip("\r"))[0]


class CommandParser:
    """Lines in, text events out; deterministic, so a replay rebuilds the same events."""

    def __init__(self) -> None:
        self.summary = base.Summary()

    def feed_stdout(self, line: bytes) -> list[models.EventDraft]:
        return [models.EventDraft(type=models.EventType.agent_text, data={"text": _text(line)})]

    def feed_stderr(self, line: bytes) -> list[models.EventDraft]:
        return [models.EventDraft(type=models.EventType.agent_stderr, data={"line": _text(line)})]

    def finish(
        self, exit_code: int | None, signal: int | None, *, stopped: bool, lost: bool = False
    ) -> base.Outcome:
        if stopped:
            return base.Outcome(models.RunStatus.stopped)
        if lost:
            return base.Outcome(
                models.RunStatus.lost, "the command's sandbox went away without an exit status"
            )
        if exit_code == 0:
            return base.Outcome(models.RunStatus.succeeded)
        if signal is None and exit_code is not None and 128 < exit_code < 128 + 65:
            signal = exit_code - 128  # a shell-style status: the process died of a signal
        if signal is not None:
            reason = f"the command was killed by {signal_name(signal)}"
            if signal == 9:
                reason += " (often the sandbox's memory limit)"
            return base.Outcome(models.RunStatus.failed, reason)
        return base.Outcome(models.RunStatus.failed, f"the command exited with code {exit_code}")
