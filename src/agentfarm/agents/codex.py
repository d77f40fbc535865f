"""The Codex CLI adapter: ``codex exec --json``, one process per turn. Its output is parsed in
``codex_stream``.

Sandbox and approvals: the command passes ``--dangerously-bypass-approvals-and-sandbox``.
agentfarm's own sandbox (bubblewrap with an egress proxy locally, the pod on Kubernetes) is the
boundary around the agent, as it is for Claude. Codex's sandbox would nest a second one
inside it (Landlock/seccomp or bubblewrap of its own, which needs privileges the inner
process does not have, and a network policy that would fight the egress proxy), and its
approval prompts have nobody to answer them in a headless run. So both are off, and the
agent may do anything agentfarm's sandbox lets it do.

The model endpoint: Codex no longer reads ``OPENAI_BASE_URL``. With a base URL the command
defines a provider ``agentfarm`` through ``-c`` flags (no config file to write or keep in
sync): ``base_url``, ``env_key = "CODEX_API_KEY"`` (the key comes from the environment, never
argv), ``wire_api = "responses"``. Without one, Codex's built-in OpenAI provider is used, and
``codex exec`` reads ``CODEX_API_KEY`` itself.

One ``codex exec`` answers one prompt; a follow-up is a new process (``codex exec resume <thread
id>``, flags given again). The run's process is therefore a small driver (``codex_driver``, run
by the sandbox's ``python3``) that takes the prompt and follow-ups as ``{"text": ...}`` lines on
stdin and runs one ``codex exec`` per turn in the same workspace and HOME. Each turn's text
reaches Codex on its stdin (the prompt argument is ``-``, after ``--``): no size limit of a
command-line argument, and nothing for Codex to append to the prompt. There is no stdin
interrupt: stopping is by signal, which the driver passes on. So a turn cannot be interrupted
without ending the run: SIGINT to a running ``codex exec`` (0.169.0) ends it with no
``turn.failed`` and "failed to record rollout items: thread ... not found" on stderr, so the
thread is not safe to resume. The API answers 409 and says to stop the run instead.

Credentials: ``CODEX_API_KEY`` in the agent's environment (the supervisor hands on an
``OPENAI_API_KEY`` under that name). A ChatGPT-plan login (``$CODEX_HOME/auth.json``) is not
used: every run has a private HOME (docs/agents.md).

What Codex has no equivalent for is not passed: ``permission_mode``, ``allowed_tools``,
``disallowed_tools``, ``max_turns``. ``append_system_prompt`` becomes ``developer_instructions``.

Facts checked against the pinned CLI (0.169.0): ``-c key=value`` values are TOML;
``developer_instructions`` reaches the request; ``--`` before the prompt works for ``exec`` and
``exec resume``; an HTTP 400 is not retried, a 5xx is retried ``request_max_retries`` times.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from agentfarm.agents import codex_driver, codex_stream
from agentfarm.domain import launch, models

#: The binary's name; the backend finds it (the pinned copy, PATH).
BINARY = "codex"
#: The provider name the ``-c`` flags define when a base URL is given.
PROVIDER = "agentfarm"
#: Where the key comes from, for either provider.
API_KEY = "CODEX_API_KEY"

#: A stdin line for the driver: ``{"text": "..."}`` (the first is the prompt).
FOLLOWUP = launch.Followup(prefix=b'{"text": ', suffix=b"}\n")
#: After a turn's end the backend closes stdin unless more is queued: the driver then exits.
TURN_ENDS = ("turn.completed", "turn.failed")

#: Settings every launch gets: no update check or analytics calls from inside the sandbox, and
#: no plugins (with them on, 0.169.0 reaches github.com, api.github.com and chatgpt.com at each
#: start: egress denials in every run).
BASE_SETTINGS = {
    "check_for_update_on_startup": False,
    "analytics.enabled": False,
    "features.plugins": False,
}


def toml_value(value: str | bool | int) -> str:
    """A ``-c`` value as TOML. JSON strings are TOML basic strings once non-ASCII is left as is
    (TOML has no surrogate-pair escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def settings(spec: models.AgentSpec, base_url: str | None) -> dict[str, str | bool | int]:
    values: dict[str, str | bool | int] = dict(BASE_SETTINGS)
    if base_url:
        provider = f"model_providers.{PROVIDER}"
        values.update(
            {
                "model_provider": PROVIDER,
                f"{provider}.name": PROVIDER,
                f"{provider}.base_url": base_url,
                f"{provider}.env_key": API_KEY,
                f"{provider}.wire_api": "responses",
                # A failing API should fail the run fast and say so (as for Claude).
                f"{provider}.request_max_retries": 2,
                f"{provider}.stream_max_retries": 2,
            }
        )
    if spec.append_system_prompt:
        values["developer_instructions"] = spec.append_system_prompt
    return values


def turn_flags(spec: models.AgentSpec, base_url: str | None) -> list[str]:
    """The flags of every turn's ``codex exec`` (first or resumed): Codex needs them again."""
    flags = ["--json", "--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check"]
    if spec.model:
        flags += ["--model", spec.model]
    for key, value in settings(spec, base_url).items():
        flags += ["-c", f"{key}={toml_value(value)}"]
    return flags


@functools.cache
def driver_source() -> str:
    """The driver's source, handed to ``python3 -c`` (read once from this package)."""
    return Path(codex_driver.__file__).read_text(encoding="utf-8")


class CodexAdapter:
    """Builds ``codex exec`` command lines and parsers (see the module docstring)."""

    name = "codex"

    def build_command(
        self, spec: models.AgentSpec, *, base_url: str | None = None, binary: str = BINARY
    ) -> launch.AgentCommand:
        """The run's command: the driver (``codex_driver``) running ``binary`` once per turn;
        the prompt and follow-ups reach it on stdin."""
        return launch.AgentCommand(
            argv=[binary, *turn_flags(spec, base_url)],
            env=dict(spec.env),
            stdin=FOLLOWUP.encode(spec.prompt),
            close_stdin_after=TURN_ENDS,
            followup=FOLLOWUP,
            followup_window=float(spec.followup_window_seconds),
            runner=("python3", "-S", "-I", "-c", driver_source()),
        )

    def exec_argv(
        self,
        spec: models.AgentSpec,
        *,
        binary: str = BINARY,
        base_url: str | None = None,
        resume_thread: str | None = None,
    ) -> list[str]:
        """One turn's process as the driver starts it (the turn's text then on its stdin): the
        first turn, or with ``resume_thread`` a follow-up on that thread."""
        argv = [binary, "exec"]
        if resume_thread is not None:
            argv.append("resume")
        argv += [*turn_flags(spec, base_url), codex_driver.END_OF_OPTIONS]
        if resume_thread is not None:
            argv.append(resume_thread)
        return [*argv, codex_driver.FROM_STDIN]

    def credential_names(self) -> tuple[str, ...]:
        return (API_KEY,)

    def new_parser(self) -> codex_stream.CodexStreamParser:
        return codex_stream.CodexStreamParser()
