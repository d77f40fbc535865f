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

The prompt is the last argument, after ``--`` (a prompt starting with ``-`` stays a prompt).
stdin is left empty: Codex appends whatever is on stdin to the prompt, and with ``-`` instead
of a prompt it would wait for stdin to close, which agentfarm's launches do not do. Follow-ups
are new processes (``codex exec resume <thread id>``, flags given again): there is no stdin
protocol, and no stdin interrupt; stopping is by signal.

What Codex has no equivalent for is not passed: ``permission_mode``, ``allowed_tools``,
``disallowed_tools``, ``max_turns``. ``append_system_prompt`` becomes ``developer_instructions``.

Facts checked against the pinned CLI (0.169.0): ``-c key=value`` values are TOML;
``developer_instructions`` reaches the request; ``--`` before the prompt works for ``exec`` and
``exec resume``; an HTTP 400 is not retried, a 5xx is retried ``request_max_retries`` times.
"""

from __future__ import annotations

import json

from agentfarm.agents import codex_stream
from agentfarm.domain import launch, models

#: The binary's name; the backend finds it (the pinned copy, PATH).
BINARY = "codex"
#: The provider name the ``-c`` flags define when a base URL is given.
PROVIDER = "agentfarm"
#: Where the key comes from, for either provider.
API_KEY = "CODEX_API_KEY"
#: Linux refuses a single argument over 128 KiB (MAX_ARG_STRLEN); leave room for the rest.
MAX_PROMPT_BYTES = 120 * 1024

#: Settings every launch gets: no update check or analytics calls from inside the sandbox.
BASE_SETTINGS = {
    "check_for_update_on_startup": False,
    "analytics.enabled": False,
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


class CodexAdapter:
    """Builds ``codex exec`` command lines and parsers (see the module docstring)."""

    name = "codex"

    def build_command(
        self,
        spec: models.AgentSpec,
        *,
        binary: str = BINARY,
        base_url: str | None = None,
        resume_thread: str | None = None,
        prompt: str | None = None,
    ) -> launch.AgentCommand:
        """The first turn, or with ``resume_thread`` a follow-up ``prompt`` on that thread."""
        text = spec.prompt if prompt is None else prompt
        if len(text.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
            raise ValueError(
                f"The prompt is over {MAX_PROMPT_BYTES // 1024} KiB, more than Codex can take "
                "as an argument; shorten it or move the detail into a file in the repository."
            )
        argv = [binary, "exec"]
        if resume_thread is not None:
            argv.append("resume")
        argv += ["--json", "--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check"]
        if spec.model:
            argv += ["--model", spec.model]
        for key, value in settings(spec, base_url).items():
            argv += ["-c", f"{key}={toml_value(value)}"]
        argv.append("--")
        if resume_thread is not None:
            argv.append(resume_thread)
        argv.append(text)
        return launch.AgentCommand(argv=argv, env=dict(spec.env))

    def credential_names(self) -> tuple[str, ...]:
        return (API_KEY,)

    def new_parser(self) -> codex_stream.CodexStreamParser:
        return codex_stream.CodexStreamParser()
