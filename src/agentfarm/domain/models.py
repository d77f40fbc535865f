"""Configs, runs and events: the nouns of agentfarm."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentfarm.domain import egress as egress_policy
from agentfarm.domain import gittokens

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOOL_RE = re.compile(r"^[A-Za-z0-9_*:.()\- /,@\[\]]{1,200}$")
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
ACTIVE_STATUSES = frozenset({RunStatus.queued, RunStatus.starting, RunStatus.running})

PermissionMode = Literal["default", "acceptEdits", "bypassPermissions", "plan"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class SandboxSpec(_Strict):
    """How the local backend isolates an agent."""

    mode: Literal["bwrap", "none"] = Field(
        "bwrap",
        description="`bwrap` (bubblewrap, the default) or `none`: an explicit, visible opt-out.",
    )
    network: Literal["none", "allowlist", "open"] = Field(
        "allowlist",
        description="`allowlist` (the default): its own network, out only through a proxy to "
        "the model endpoint, the run's git remote and `egress`; `none`: no network; `open`: "
        "the host's network (an explicit, visible choice). Deprecated: `true`/`false` in older "
        "configs read as `allowlist`/`none`.",
    )
    egress: list[Annotated[str, Field(max_length=300)]] = Field(
        default_factory=list,
        max_length=200,
        description="Hosts the agent may reach with `network: allowlist`: `host` (ports 80 and "
        "443), `host:port`, `*.domain`, an IP address (needed for a private one) or a group: "
        + ", ".join(f"`{g}`" for g in egress_policy.GROUPS)
        + ".",
    )
    memory_mb: int | None = Field(4096, ge=64, le=1_048_576, description="Memory limit (MiB).")
    cpus: float | None = Field(None, gt=0, le=1024, description="CPU limit, in cores.")
    pids: int | None = Field(1024, ge=16, le=1_000_000, description="Process-count limit.")

    @field_validator("network", mode="before")
    @classmethod
    def _legacy_network(cls, value: object) -> object:
        # Stored configs and runs from before the policy had `network: true/false`.
        if isinstance(value, bool):
            return "allowlist" if value else "none"
        return value

    @field_validator("egress")
    @classmethod
    def _check_egress(cls, value: list[str]) -> list[str]:
        for entry in value:
            egress_policy.parse_entry(entry)  # a ValueError names the entry and the fix
        return [entry.strip() for entry in value]


#: A Kubernetes resource quantity ("500m", "2", "4Gi").
QUANTITY_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)?(?:m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
#: A label key (optionally prefixed) or value, and a DNS-1123 label (RuntimeClass, account).
LABEL_KEY_RE = re.compile(
    r"^(?:[a-z0-9.-]{1,253}/)?[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


class K8sResourceAmounts(_Strict):
    cpu: str | None = Field(None, pattern=QUANTITY_RE.pattern, description='CPU, e.g. "500m".')
    memory: str | None = Field(None, pattern=QUANTITY_RE.pattern, description='e.g. "4Gi".')
    ephemeral_storage: str | None = Field(
        None, pattern=QUANTITY_RE.pattern, description='Scratch disk, e.g. "10Gi".'
    )


class K8sResources(_Strict):
    requests: K8sResourceAmounts = Field(
        default_factory=lambda: K8sResourceAmounts(cpu="500m", memory="1Gi")
    )
    limits: K8sResourceAmounts = Field(
        default_factory=lambda: K8sResourceAmounts(cpu="2", memory="4Gi")
    )


class K8sToleration(_Strict):
    key: str | None = Field(None, max_length=317, pattern=LABEL_KEY_RE.pattern)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(None, max_length=63, pattern=LABEL_VALUE_RE.pattern)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


class KubernetesSpec(_Strict):
    """Where and how the `kubernetes` backend runs an agent; unset fields take the server's
    `AGENTFARM_K8S_*` defaults."""

    namespace: str | None = Field(
        None, pattern=SLUG_RE.pattern, description="Namespace for the run's pod and Secret."
    )
    runtime_class: str | None = Field(
        None,
        pattern=SLUG_RE.pattern,
        description="RuntimeClass: `kata-fc`, `kata-qemu`, `gvisor`, or unset for the default.",
    )
    image: str | None = Field(None, max_length=512, description="Agent image (pin a tag).")
    resources: K8sResources = Field(default_factory=K8sResources)
    node_selector: dict[
        Annotated[str, Field(max_length=317, pattern=LABEL_KEY_RE.pattern)],
        Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_RE.pattern)],
    ] = Field(default_factory=dict, max_length=50)
    tolerations: list[K8sToleration] = Field(default_factory=list, max_length=50)
    credentials: Literal["token", "shared-home"] = Field(
        "token",
        description="`token`: CLAUDE_CODE_OAUTH_TOKEN from a per-run Secret (headless); "
        "`shared-home`: the shared ~/.claude on a ReadWriteMany volume.",
    )
    service_account: str | None = Field(
        None,
        pattern=SLUG_RE.pattern,
        description="ServiceAccount of the pod (its token is never mounted).",
    )


class AgentSpec(_Strict):
    """Everything needed to launch an agent; the part of a config a run snapshots."""

    agent: Literal["claude"] = Field("claude", description="Agent CLI: `claude` (Claude Code).")
    repo: str = Field(
        ..., min_length=1, max_length=4096, description="Local path or git URL to clone."
    )
    base_branch: str | None = Field(
        None, max_length=255, description="Branch to start from; default: the repo's HEAD."
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
    allowed_tools: list[Annotated[str, Field(pattern=TOOL_RE.pattern)]] = Field(
        default_factory=list, max_length=200, description="Tools allowed, e.g. `Bash(git *)`."
    )
    disallowed_tools: list[Annotated[str, Field(pattern=TOOL_RE.pattern)]] = Field(
        default_factory=list, max_length=200, description="Tools the agent may not use."
    )
    max_turns: int | None = Field(
        None, ge=1, le=10_000, description="Stop the agent after this many turns."
    )
    append_system_prompt: str | None = Field(
        None, max_length=100_000, description="Text appended to the agent's system prompt."
    )
    env: dict[str, Annotated[str, Field(max_length=32_768)]] = Field(
        default_factory=dict, description="Extra environment variables for the agent."
    )
    backend: Literal["local", "kubernetes"] = Field(
        "local", description="Where the agent runs: `local` (bubblewrap) or `kubernetes`."
    )
    sandbox: SandboxSpec = Field(
        default_factory=SandboxSpec, description="Isolation and limits (local backend)."
    )
    kubernetes: KubernetesSpec | None = Field(
        None, description="Settings of the `kubernetes` backend (defaults when unset)."
    )

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

    @field_validator("base_branch")
    @classmethod
    def _check_branch(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith("-") or ".." in value or any(c in value for c in " ~^:?*[\\\x00"):
            raise ValueError(f"{value!r} is not a valid branch name")
        return value

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


class Run(BaseModel):
    id: str = Field(default_factory=new_id)
    config_id: str | None = None
    config_name: str | None = None
    spec: AgentSpec
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

    @property
    def prompt(self) -> str:
        return self.spec.prompt


class EventType(StrEnum):
    run_status = "run.status"
    run_notice = "run.notice"
    agent_init = "agent.init"
    agent_text = "agent.text"
    agent_thinking = "agent.thinking"
    agent_tool_call = "agent.tool_call"
    agent_tool_result = "agent.tool_result"
    agent_result = "agent.result"
    agent_system = "agent.system"
    agent_stderr = "agent.stderr"
    agent_unparsed = "agent.unparsed"
    user_message = "user.message"
    sandbox_egress_denied = "sandbox.egress_denied"


class EventDraft(BaseModel):
    """An event before the store gives it its sequence number."""

    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    ts: datetime = Field(default_factory=utcnow)


class Event(EventDraft):
    run_id: str
    seq: int
