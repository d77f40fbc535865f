"""The first part of the server's settings: where it lives, its agents' programs and prices,
and what limits runs (caps, the queue, budgets, the watchdog, parking). ``settings.Settings``
adds the rest; the split only keeps modules small (fields keep their documented order).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agentfarm.domain import pricing


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agentfarm"


class RunSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTFARM_", extra="ignore")

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the database, secrets, token and run workspaces live.",
    )
    host: str = Field("127.0.0.1", description="Address the server listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port the server listens on.")
    token: SecretStr | None = Field(
        None, description="API token; generated into the data directory at first start if unset."
    )
    claude_bin: str | None = Field(
        None,
        description="Path to the Claude Code CLI; default: the project's pinned copy, then PATH.",
    )
    codex_bin: str | None = Field(
        None,
        description="Path to the Codex CLI; default: the project's pinned copy (`make codex`), "
        "then PATH.",
    )
    model_prices: dict[str, pricing.ModelPrice] = Field(
        default_factory=dict,
        description="JSON price table over the built-in one, in US dollars per million tokens, "
        'e.g. `{"gpt-5-codex": {"input": 1.25, "cached_input": 0.125, "output": 10}}`; '
        "`default` prices a run that names no model. Estimates the cost of agents that report "
        "tokens only (Codex); see docs/agents.md.",
    )
    stop_grace_seconds: float = Field(
        10.0, ge=0, le=600, description="Grace period between SIGTERM and SIGKILL on stop."
    )
    max_concurrent_runs: int = Field(
        8, ge=1, le=1000, description="Runs beyond this many wait in `queued`."
    )
    # --- queue and caps (docs/fleet.md) ---------------------------------------------------
    max_concurrent_per_backend: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Caps per backend, e.g. `local=4,kubernetes=20`; runs beyond one wait in "
        "`queued`. A backend not named has only the global cap.",
    )
    max_concurrent_per_repo: int = Field(
        0,
        ge=0,
        le=1000,
        description="Runs (of any origin) on one repository beyond this many wait (0: no cap).",
    )
    pipeline_checks_poll_seconds: float = Field(
        120.0,
        ge=1,
        le=86_400,
        description="How often the pipeline reads the checks of its open pull requests where no "
        "webhook tells it (Forgejo/Gitea, polling forges).",
    )
    pipeline_blocked_recheck_seconds: float = Field(
        30.0,
        ge=1,
        le=86_400,
        description="How often an issue waiting on `Blocked by #N` asks the forge whether #N "
        "is closed.",
    )
    pipeline_max_concurrent_per_repo: int = Field(
        1,
        ge=0,
        le=1000,
        description="Pipeline runs on one repository beyond this many wait, so two agents never "
        "race on one repository's issues (0: no cap).",
    )
    max_queued_runs: int = Field(
        100,
        ge=1,
        le=100_000,
        description="A launch while this many runs wait in `queued` is refused with 429; "
        "running runs are never evicted to make room.",
    )
    queue_person_first: bool = Field(
        True,
        description="A person's launch (cockpit, CLI) goes before queued pipeline and API runs; "
        "false: strictly oldest first.",
    )
    # --- budgets (docs/fleet.md) ----------------------------------------------------------
    daily_budget_usd: float | None = Field(
        None, gt=0, description="What all runs together may cost per UTC day, in US dollars."
    )
    monthly_budget_usd: float | None = Field(
        None,
        gt=0,
        description="What all runs together may cost per calendar month (UTC), in US dollars.",
    )
    budget_reached_launch: Literal["queue", "refuse"] = Field(
        "queue",
        description="A launch while a day or month budget is reached: `queue` (it waits until "
        "the budget resets) or `refuse` (429).",
    )
    budget_reached_running: Literal["finish", "stop"] = Field(
        "finish",
        description="Runs still running when a day or month budget is reached: `finish` or `stop`.",
    )
    budget_check_seconds: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="How often day and month budgets are checked against spend.",
    )
    sandbox_uid: int = Field(
        61000, ge=1, description="Uid agents run as when the server runs as root."
    )
    sandbox_gid: int = Field(
        61000, ge=1, description="Gid agents run as when the server runs as root."
    )
    local_clone_pool: int = Field(
        2,
        ge=0,
        le=64,
        description="Local backend: clones of a local source repository kept ready per "
        "repository and base branch, made after a launch of it and brought up to date when a "
        "run takes one, so that a launch need not clone (0: every launch clones).",
    )
    local_monitor_pool: int = Field(
        2,
        ge=0,
        le=64,
        description="Local backend: run monitors started ahead of need, waiting for their "
        "run (0: each launch starts its own).",
    )
    local_agent_cpu_weight: int = Field(
        25,
        ge=1,
        le=10_000,
        description="Local backend: how much all agents together weigh for the CPU against the "
        "control plane when the CPU is short, in cgroup v2 units (100: as much as the control "
        "plane). The parent cgroup of the runs gets it (`cpu.weight`, or `cpu.shares` scaled "
        "from 1024 on cgroup v1) where the server may make cgroups, and each run's monitor, "
        "its sandbox and agent the matching nice value (25: 6), also on its session's "
        "autogroup; so that many busy agents cannot starve the server and its live streams.",
    )
    model_stall_seconds: float = Field(
        300.0,
        ge=0,
        description="Watchdog: a run waiting this long for the model (a request out, or a "
        "message begun) with no output has stalled (0: never). A config's `watchdog` "
        "overrides it.",
    )
    tool_quiet_seconds: float = Field(
        3600.0,
        ge=0,
        description="Watchdog: a tool (a test suite, a build) may run this long without output "
        "before the run counts as stalled (0: never). A config's `watchdog` overrides it.",
    )
    result_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="Watchdog: an agent that reported its result but has not exited after this "
        "long is ended, and the run finishes on its result (0: wait forever).",
    )
    stall_resumes: int = Field(
        1,
        ge=0,
        le=100,
        description="A stalled run is stopped and resumed in its session this many times before "
        "it ends `failed` with the reason `stalled`. A config's `watchdog` overrides it.",
    )
    park_margin_seconds: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="A run parked for the model's usage limit resumes this long after the "
        "limit's reset time.",
    )
    park_unknown_reset_seconds: float = Field(
        3600.0,
        ge=1,
        le=7 * 86_400,
        description="How long a run waits for a usage limit whose reset time the agent did not "
        "say.",
    )
    park_max: int = Field(
        5,
        ge=0,
        le=1000,
        description="A run that hits the usage limit more often than this ends `failed` instead "
        "of being parked again (0: never park).",
    )

    @field_validator("model_prices")
    @classmethod
    def _lower_models(cls, value: dict[str, pricing.ModelPrice]) -> dict[str, pricing.ModelPrice]:
        return {name.strip().lower(): price for name, price in value.items()}

    @field_validator("max_concurrent_per_backend", mode="before")
    @classmethod
    def _split_caps(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        caps: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, number = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(
                    f"max_concurrent_per_backend: {item!r} is not `backend=number` "
                    "(e.g. `local=4,kubernetes=20`)"
                )
            caps[name.strip()] = number.strip()
        return caps

    @field_validator("max_concurrent_per_backend")
    @classmethod
    def _check_caps(cls, value: dict[str, int]) -> dict[str, int]:
        for name, cap in value.items():
            if cap < 1:
                raise ValueError(f"max_concurrent_per_backend: {name}={cap}: a cap is 1 or more")
        return value
