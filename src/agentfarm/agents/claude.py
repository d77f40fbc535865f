"""The Claude Code CLI adapter: the command line, its environment, and the stdin lines that
carry the prompt, follow-ups and interrupts. Its output is parsed in ``claude_stream``.

The CLI runs headless (``-p --output-format stream-json --input-format stream-json``): the
prompt and follow-ups arrive on stdin as stream-json user lines, and stdout carries one JSON
object per line (``system/init``, ``assistant``, ``user`` tool results, ``result``, ...).

Facts this module relies on, checked against the pinned CLI (2.1.329): each
``--allowedTools=<tool>`` / ``--disallowedTools=<tool>`` given separately accumulates. The
``=`` form keeps the variadic option from swallowing later arguments and keeps spaces inside a
rule (``Bash(git *)``) intact. ``-p`` needs no prompt argument when the prompt comes on stdin.
"""

from __future__ import annotations

import dataclasses
import json
import secrets

from agentfarm.agents import claude_stream
from agentfarm.domain import launch, models

#: The binary's name; the backend finds it (AGENTFARM_CLAUDE_BIN, the pinned copy, PATH).
BINARY = "claude"

BASE_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    # The CLI's default retries a failing API for minutes; a run should fail fast and say so.
    "CLAUDE_CODE_MAX_RETRIES": "2",
}

#: A stream-json user line is this prefix, the text as a JSON string, this suffix.
FOLLOWUP = launch.Followup(
    prefix=b'{"type": "user", "message": {"role": "user", "content": ', suffix=b"}}\n"
)


def user_line(text: str) -> bytes:
    return FOLLOWUP.encode(text)


class ClaudeAdapter:
    """Builds Claude Code command lines and parsers (see the module docstring)."""

    name = "claude"

    def build_command(
        self, spec: models.AgentSpec, *, base_url: str | None = None, binary: str = BINARY
    ) -> launch.AgentCommand:
        """``base_url`` is not needed: ANTHROPIC_BASE_URL reaches the CLI with the credentials."""
        argv = [
            binary,
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",  # mandatory with stream-json in print mode
            "--input-format",
            "stream-json",
            # Each stdin message echoed as the CLI takes it: how the backend knows a follow-up
            # sent while a tool runs was answered within the running turn.
            "--replay-user-messages",
            "--permission-mode",
            spec.permission_mode,
        ]
        if spec.model:
            argv += ["--model", spec.model]
        argv += [f"--allowedTools={tool}" for tool in spec.allowed_tools]
        argv += [f"--disallowedTools={tool}" for tool in spec.disallowed_tools]
        if spec.max_turns is not None:
            argv += ["--max-turns", str(spec.max_turns)]
        if spec.max_budget_usd is not None:
            argv += ["--max-budget-usd", str(spec.max_budget_usd)]
        if spec.append_system_prompt:
            argv += ["--append-system-prompt", spec.append_system_prompt]
        # The config's own variables win: a user may want more retries, for example.
        env = {**BASE_ENV, **spec.env}
        return launch.AgentCommand(
            argv=argv,
            env=env,
            stdin=user_line(spec.prompt),
            close_stdin_after=("result",),
            interrupt=self.interrupt(),
            followup=FOLLOWUP,
            followup_window=float(spec.followup_window_seconds),
            replays=True,
        )

    def resume_command(
        self, spec: models.AgentSpec, session_id: str, prompt: str, *, binary: str = BINARY
    ) -> launch.AgentCommand:
        """The same command continuing ``session_id`` (kept in the run's HOME), with
        ``prompt`` as its next user message."""
        command = self.build_command(spec, binary=binary)
        return dataclasses.replace(
            command, argv=[*command.argv, "--resume", session_id], stdin=user_line(prompt)
        )

    def credential_names(self) -> tuple[str, ...]:
        return ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")

    def followup(self, text: str) -> bytes:
        return user_line(text)

    def interrupt(self) -> bytes:
        request = {
            "type": "control_request",
            "request_id": f"interrupt-{secrets.token_hex(4)}",
            "request": {"subtype": "interrupt"},
        }
        return (json.dumps(request) + "\n").encode()

    def new_parser(self) -> claude_stream.ClaudeStreamParser:
        return claude_stream.ClaudeStreamParser()
