"""Configs, runs and events: the nouns of agentfarm."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)

from agentfarm.domain import backend_config, gittokens, spec_schema

# Re-exported: the rest of the code names them ``models.X``.
from agentfarm.domain.agent_options import CommandSpec as CommandSpec
from agentfarm.domain.agent_options import PromptDelivery as PromptDelivery
from agentfarm.domain.agent_options import Strict as _Strict
from agentfarm.domain.agent_options import WatchdogSpec as WatchdogSpec
from agentfarm.domain.events import Event as Event
from agentfarm.domain.events import EventDraft as EventDraft
from agentfarm.domain.events import EventType as EventType

SLUG_RE = backend_config.SLUG_RE
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SECRET_NAME_SCHEMA: dict[str, Any] = {"pattern": SECRET_NAME_RE.pattern}
#: Stored secrets that are never a git token: forges' webhook secrets
#: (``pipeline.webhook_secret_name``).
NOT_GIT_TOKENS_PREFIX = "FORGE_WEBHOOK_"
TOOL_RE = re.compile(rf"^[{spec_schema.TOOL_CHARS}]{{1,200}}$")
#: Variables a config may not set: they are the server's to control.
RESERVED_ENV = frozenset(
    {
        "HOME",
        "PATH",
        "USER",
        "LOGNAME",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "CODEX_API_KEY",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
    }
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A short, URL- and branch-safe identifier (12 hex digits)."""
    return secrets.token_hex(6)


class RunStatus(StrEnum):
    queued = "queued"
    starting = "starting"
    running = "running"
    #: Waiting for the model's usage limit to reset (``Run.parked_until``); resumes by itself.
    parked = "parked"
    succeeded = "succeeded"
    failed = "failed"
    stopped = "stopped"
    lost = "lost"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {RunStatus.succeeded, RunStatus.failed, RunStatus.stopped, RunStatus.lost}
)
ACTIVE_STATUSES = frozenset(
    {RunStatus.queued, RunStatus.starting, RunStatus.running, RunStatus.parked}
)
#: Ended runs a person may continue with a new prompt (a new agent process in their session).
CONTINUABLE_STATUSES = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.stopped})

PermissionMode = Literal["default", "acceptEdits", "bypassPermissions", "plan"]
#: Who asked for a run: a person (the cockpit, the CLI), the AFK pipeline, or another program
#: through the API. The queue orders by it (a person's launch first, by default) and the
#: per-repository cap of pipeline runs counts by it.
RunOrigin = Literal["person", "pipeline", "api"]


AgentKind = Literal["claude", "codex", "command"]
#: Agents that report tokens but no price: their cost is estimated from a price table.
ESTIMATED_COST_AGENTS = frozenset({"codex"})
#: Agents whose output is plain lines (no protocol): they report no cost and no turns, so only
#: the time budget holds for them, and all their silence is a tool's (the watchdog).
OUTPUT_ONLY_AGENTS = frozenset({"command"})


class AgentSpec(_Strict):
    """Everything needed to launch an agent; the part of a config a run snapshots."""

    model_config = ConfigDict(json_schema_extra=spec_schema.ACROSS)

    agent: AgentKind = Field(
        "claude",
        description="Agent CLI: `claude` (Claude Code), `codex` (OpenAI Codex CLI) or `command` "
        "(any program, see `command`).",
    )
    repo: spec_schema.Repo = Field(..., description="Local path or git URL to clone.")
    base_branch: spec_schema.Branch | None = Field(
        None, description="Branch to start from; default: the repo's HEAD."
    )
    prompt: str = Field("", max_length=200_000, description="The task for the agent.")
    model: str | None = Field(
        None, max_length=200, description="Model name passed to the CLI; default: its own."
    )
    permission_mode: PermissionMode = Field(
        "bypassPermissions",
        description="`default`, `acceptEdits`, `bypassPermissions` (safe inside the sandbox) "
        "or `plan`.",
    )
    allowed_tools: list[spec_schema.Tool] = Field(
        default_factory=list, max_length=200, description="Tools allowed, e.g. `Bash(git *)`."
    )
    disallowed_tools: list[spec_schema.Tool] = Field(
        default_factory=list, max_length=200, description="Tools the agent may not use."
    )
    max_turns: int | None = Field(
        None, ge=1, le=10_000, description="Stop the agent after this many turns."
    )
    max_budget_usd: float | None = Field(
        None,
        gt=0,
        le=100_000,
        description="Stop the run once it has cost this many US dollars (passed to Claude Code "
        "as `--max-budget-usd` and enforced by agentfarm from the streamed cost).",
    )
    max_minutes: float | None = Field(
        None, gt=0, le=100_000, description="Stop the run after this many minutes of running."
    )
    append_system_prompt: str | None = Field(
        None, max_length=100_000, description="Text appended to the agent's system prompt."
    )
    env: dict[str, Annotated[str, Field(max_length=32_768)]] = Field(
        default_factory=dict,
        description="Extra environment variables for the agent.",
        json_schema_extra=spec_schema.env(ENV_NAME_RE.pattern, sorted(RESERVED_ENV)),
    )
    command: CommandSpec | None = Field(
        None,
        validate_default=True,
        description="For `agent: command` only: `{argv: [...], prompt: stdin|argument|none}`.",
    )
    followup_window_seconds: int = Field(
        0,
        ge=0,
        le=86_400,
        description="Keep the run open this long after a turn ends, for a follow-up message "
        "(`agentfarm send`, the run page's reply box); 0: the run ends at its result.",
    )
    notify_secrets: list[Annotated[str, Field(json_schema_extra=SECRET_NAME_SCHEMA)]] = Field(
        default_factory=list,
        max_length=20,
        description="Names of stored secrets (`agentfarm secret set NAME`), each holding Apprise "
        "URLs (comma- or space-separated) told of this config's runs besides the farm-wide "
        "ones. Names, not URLs: a URL carries its service's token.",
    )
    git_token_secret: str | None = Field(
        None,
        pattern=SECRET_NAME_RE.pattern,
        description="Name of a stored secret used as the git token for the run's repository "
        "(an https:// or http:// URL): the clone and the push send it, the agent never sees it.",
    )
    watchdog: WatchdogSpec | None = Field(
        None,
        description="Watchdog thresholds for this config: `{model_stall_seconds, "
        "tool_quiet_seconds, stall_resumes}`; each left out is the server's setting.",
    )
    backend: backend_config.BackendSpec = Field(
        default_factory=backend_config.LocalSpec,
        description="Where the agent runs and that backend's settings: `{type: local, "
        "sandbox: {...}}` (bubblewrap, the default) or `{type: kubernetes, namespace: ..., "
        "image: ..., ...}`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_backend(cls, data: Any) -> Any:
        # Before issue 8 a config said `backend: local|kubernetes` and carried top-level
        # `sandbox` and `kubernetes` blocks, one of them ignored. Read that shape where it
        # is unambiguous (docs/configuration.md has the deprecation note).
        if not isinstance(data, dict):
            return data
        if not ({"sandbox", "kubernetes"} & data.keys()) and not isinstance(
            data.get("backend"), str
        ):
            return data
        return backend_config.from_legacy_shape(data)

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: CommandSpec | None, info: ValidationInfo) -> CommandSpec | None:
        agent = info.data.get("agent")
        if agent == "command" and value is None:
            raise ValueError("the command agent needs a command: {argv: [program, ...]}")
        if agent != "command" and value is not None:
            raise ValueError(f"a command is only for `agent: command`, not {agent!r}")
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 200:
            raise ValueError("at most 200 environment variables")
        for key in value:
            if not ENV_NAME_RE.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key in RESERVED_ENV:
                raise ValueError(
                    f"{key} is set by agentfarm; store credentials with `agentfarm secret set`"
                )
        return value

    @field_validator("notify_secrets")
    @classmethod
    def _check_notify_secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            if "://" in name:
                raise ValueError(
                    "give the name of a stored secret, not a URL (it carries a token and would "
                    "be shown with the config): `agentfarm secret set NOTIFY_TEAM '<url>'`, "
                    "then `notify_secrets: [NOTIFY_TEAM]`"
                )
            if not SECRET_NAME_RE.match(name):
                raise ValueError(
                    f"{name!r} is not a secret name: use letters, digits and _ (e.g. NOTIFY_TEAM)"
                )
        return value

    @field_validator("base_branch")
    @classmethod
    def _check_branch(cls, value: str | None, info: ValidationInfo) -> str | None:
        stored = isinstance(info.context, dict) and info.context.get("stored")
        if value and not stored and (problem := spec_schema.branch_problem(value)):
            raise ValueError(problem)
        return value or None

    @model_validator(mode="after")
    def _check_git_token_secret(self) -> AgentSpec:
        name = self.git_token_secret
        if name and (name in RESERVED_ENV or name.startswith(NOT_GIT_TOKENS_PREFIX)):
            # Sent to the repository's host: never the model's key or a webhook's secret.
            raise ValueError(
                f"git_token_secret may not name {name}, which is not a git token: store the "
                "repository's token under a name of its own (`agentfarm secret set NAME`)"
            )
        if name and not self.repo.lower().startswith(("https://", "http://")):
            raise ValueError(
                "git_token_secret is for a repository reached over https:// or http://; "
                f"{self.repo!r} is not such a URL: remove git_token_secret or give the URL"
            )
        return self

    @field_validator("repo")
    @classmethod
    def _check_repo(cls, value: str) -> str:
        if value.startswith("-") or "\x00" in value or "\n" in value:
            raise ValueError("repo must be a local path or a git URL")
        if value.lower().startswith("ext::"):
            raise ValueError("the ext:: git transport is not allowed")
        if gittokens.has_url_credentials(value):
            raise ValueError(
                "the repository URL carries credentials, which would be stored and shown with "
                "the run: give the URL without them and store the token with `agentfarm secret "
                "set GITHUB_TOKEN` (FORGEJO_TOKEN, or GIT_TOKEN_<HOST> for another host)"
            )
        return value


class ConfigIn(AgentSpec):
    """A config as a client sends it."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=64,
        pattern=SLUG_RE.pattern,
        description="Unique slug: lowercase letters, digits and dashes.",
    )
    max_concurrent: int | None = Field(
        None, ge=1, le=1000, description="Runs of this config beyond this many wait in `queued`."
    )
    daily_budget_usd: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="What this config's runs may cost per UTC day, in US dollars.",
    )
    monthly_budget_usd: float | None = Field(
        None,
        gt=0,
        le=10_000_000,
        description="What this config's runs may cost per calendar month (UTC), in US dollars.",
    )


class AgentConfig(ConfigIn):
    """A saved, reusable agent config."""

    id: str = Field(default_factory=new_id)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def spec(self) -> AgentSpec:
        return AgentSpec.model_validate(self.model_dump(include=set(AgentSpec.model_fields)))


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


class Continuation(BaseModel):
    """What agentfarm keeps to continue a run in a new agent process (after a usage limit
    or a stall): how often it did, the figures of the processes before (a new process counts
    from zero), and which credentials hit a limit."""

    #: Times the run was parked for a usage limit.
    parks: int = 0
    #: Times the run was resumed after a stall.
    stall_resumes: int = 0
    #: Why the last new process was started: ``usage_limit``, ``stalled`` or ``person``.
    reason: str | None = None
    base_cost_usd: float | None = None
    base_usage: Usage = Field(default_factory=Usage)
    base_num_turns: int | None = None
    #: A short digest of the model credentials the run uses (not the secret): runs with the
    #: same digest share a usage limit. Internal: left out of every dump (so of every API
    #: response); the store writes it itself (``mapping``).
    credentials_key: str | None = Field(default=None, exclude=True)


class Run(BaseModel):
    id: str = Field(default_factory=new_id)
    config_id: str | None = None
    config_name: str | None = None
    spec: AgentSpec
    #: Stored inside the ``spec`` column (``mapping.RUN_IN_SPEC``): no migration needed.
    origin: RunOrigin = "person"
    status: RunStatus = RunStatus.queued
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    branch: str | None = None
    workspace: str | None = None
    session_id: str | None = None
    cost_usd: float | None = None
    usage: Usage = Field(default_factory=Usage)
    num_turns: int | None = None
    exit_code: int | None = None
    error: str | None = None
    #: While ``parked``: when the run resumes by itself (the limit's reset plus a margin).
    parked_until: datetime | None = None
    #: The model's usage limit is close (``allowed_warning``): the sentence to show.
    warning: str | None = None
    continuation: Continuation = Field(default_factory=Continuation)

    @property
    def prompt(self) -> str:
        return self.spec.prompt

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost_estimated(self) -> bool:
        """The cost comes from agentfarm's price table (the agent reports tokens only)."""
        return self.spec.agent in ESTIMATED_COST_AGENTS
