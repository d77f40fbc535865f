"""Server settings, read once from the environment (``AGENTFARM_*``) and flags, then passed down.

Every field is documented in docs/configuration.md; a test keeps the two in sync.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets as _secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from agentfarm.domain import pricing
from agentfarm.settings_base import RunSettings

#: Events a notification can be about (``supervisor.notify.Kind`` has them, and ``test``).
NOTIFY_EVENTS = (
    "run_finished",
    "run_failed",
    "run_stopped",
    "run_parked",
    "run_resumed",
    "budget_reached",
    "pull_request_opened",
)
#: Sent unless ``notify_events`` says otherwise: a stop is a person's own doing.
DEFAULT_NOTIFY_EVENTS = (
    "run_finished",
    "run_failed",
    "run_parked",
    "budget_reached",
    "pull_request_opened",
)


class Settings(RunSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTFARM_", extra="ignore")

    retention_hours: float = Field(
        168.0,
        ge=0,
        description="Remove a finished run's files (workspace, home, logs) this many hours after "
        "it ended; its branch, row and events stay until the run is deleted (0: keep forever).",
    )
    # --- the kubernetes backend (cluster-wide defaults; a config's `kubernetes` overrides) ---
    k8s_namespace: str = Field(
        "agentfarm-agents", description="Namespace where agent pods and their Secrets go."
    )
    k8s_image: str | None = Field(
        None, description="Agent image, e.g. `ghcr.io/<owner>/agentfarm-agent:<version>`."
    )
    k8s_runtime_class: str | None = Field(
        None, description="Default RuntimeClass for agent pods (`kata-fc`, `kata-qemu`, ...)."
    )
    k8s_kubeconfig: Path | None = Field(
        None,
        description="Kubeconfig file; default: in-cluster config in a pod, else ~/.kube/config.",
    )
    k8s_instance: str = Field(
        "agentfarm",
        description="Value of the `agentfarm.dev/instance` label on this control plane's pods.",
    )
    k8s_cleanup_after_seconds: float = Field(
        3600.0, ge=0, description="Delete a finished run's pod this long after it ended."
    )
    k8s_resume_wait_seconds: float = Field(
        6 * 3600.0,
        ge=0,
        le=7 * 86_400,
        description="An agent pod whose agent exited waits this long for the control plane to "
        "resume the run in it (a park at the usage limit, a stall) or to finish it (push and "
        "exit); a run parked longer ends `failed`, its branch pushed. 0: the pod pushes and "
        "exits with its agent, its runs are not parked, and an ended run cannot be continued "
        "(its agent's session is not carried out of the pod).",
    )
    k8s_log_streams: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Agent pod logs the control plane follows at once (one connection to the "
        "API server each); past it, runs take turns (a stream yields its slot after 30 s).",
    )
    k8s_credentials_claim: str = Field(
        "claude-home",
        description="ReadWriteMany PVC holding the shared ~/.claude (credentials `shared-home`).",
    )
    k8s_forgejo_url: str | None = Field(
        None, description="Forgejo base URL whose clones use the FORGEJO_TOKEN secret."
    )
    # --- the cockpit: logins and proxies ---------------------------------------------------
    session_hours: float = Field(
        336.0, gt=0, le=8784, description="How long a cockpit login lasts (hours)."
    )
    login_failures_per_user: int = Field(
        5, ge=1, description="Failed logins per user name allowed in 15 minutes, then 429."
    )
    login_failures_per_address: int = Field(
        20, ge=1, description="Failed logins per client address allowed in 15 minutes, then 429."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated addresses or CIDRs of reverse proxies whose "
        "`X-Forwarded-For`/`X-Forwarded-Proto` (and forward-auth header) are believed.",
    )
    forward_auth_header: str | None = Field(
        None,
        description="Off by default. Header carrying the user name set by a forward-auth gate "
        "(e.g. `Remote-User`); honoured only on requests from `trusted_proxies`.",
    )

    forward_auth_secret: SecretStr | None = Field(
        None,
        description="Shared secret the proxy sends in `X-Agentfarm-Proxy-Secret`; when set, "
        "the forward-auth header is believed only together with it. Set it whenever anything "
        "but the proxy can reach the server from a trusted address (a proxy on loopback).",
    )
    public_url: str | None = Field(
        None,
        description="The URL people use to reach the cockpit (e.g. "
        "`https://agentfarm.example.org`); its host name is accepted in the `Host` header.",
        pattern=r"^https?://[^/?#@\s]+/?$",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated extra host names accepted in the `Host` header (against DNS "
        "rebinding). Loopback names, IP addresses and `public_url`'s host are always accepted; "
        "`*` accepts any name.",
    )
    public_api_docs: bool = Field(
        False, description="Serve `/docs` and `/openapi.json` without authentication."
    )
    stream_batch_ms: int = Field(
        50,
        ge=0,
        le=1000,
        description="Live views (the cockpit's run streams, the API's event streams) are "
        "woken at most once per this many milliseconds while events keep coming; an event "
        "after a quiet spell goes out at once. Larger: less control-plane CPU for many "
        "viewers, up to this much more delay (docs/benchmarks.md, fan-out). 0: every event "
        "at once.",
    )

    # --- notifications -------------------------------------------------------------------
    notify_urls: SecretStr | None = Field(
        None,
        description="Apprise URLs told of every run (comma- or space-separated), e.g. "
        "`ntfys://ntfy.sh/my-topic`; also read from the secret NOTIFY_URLS (`agentfarm secret "
        "set NOTIFY_URLS ...`). A config adds its own with `notify_secrets`.",
    )
    notify_events: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_NOTIFY_EVENTS),
        description="Comma-separated events that are sent: `run_finished`, `run_failed`, "
        "`run_stopped`, `run_parked`, `run_resumed`, `budget_reached`, `pull_request_opened`.",
    )
    notify_timeout_seconds: float = Field(
        15.0, gt=0, le=300, description="Time limit of one notification to one target."
    )
    push_contact: str | None = Field(
        None,
        description="Contact push services see for Web Push (VAPID `sub`): `mailto:...` or "
        "`https://...`; default: `public_url`, else `mailto:agentfarm@localhost`.",
        pattern=r"^(mailto:[^\s]+|https://[^\s]+)$",
    )
    push_allow_http: bool = Field(
        False,
        description="Accept `http://` Web Push endpoints (tests, a push service on a private "
        "network); browsers' push services are `https://`.",
    )

    @field_validator("notify_events", mode="before")
    @classmethod
    def _split_events(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in re.split(r"[,\s]+", value) if item.strip()]
        return value

    @field_validator("notify_events")
    @classmethod
    def _check_events(cls, value: list[str]) -> list[str]:
        for item in value:
            if item not in NOTIFY_EVENTS:
                raise ValueError(
                    f"notify_events: {item!r} is not an event; choose from "
                    + ", ".join(NOTIFY_EVENTS)
                )
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _check_openai_url(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"OPENAI_BASE_URL {value!r} is not an http(s) URL")
        return value or None

    @field_validator("trusted_proxies", "allowed_hosts", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        names = [item.lower().rstrip(".") for item in value]
        for name in names:
            if name != "*" and not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", name):
                raise ValueError(
                    f"allowed_hosts: {name!r} is not a host name (no scheme, port or path)"
                )
        return names

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value

    # Credentials for agents, read from the server's environment without the prefix.
    claude_code_oauth_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CLAUDE_CODE_OAUTH_TOKEN"),
        description="Claude subscription token (from `claude setup-token`).",
    )
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_API_KEY"), description="Anthropic API key."
    )
    anthropic_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("ANTHROPIC_BASE_URL"),
        description="Messages API endpoint for agents (a proxy or gateway).",
    )
    codex_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CODEX_API_KEY"),
        description="OpenAI API key for `agent: codex` runs (or `agentfarm secret set "
        "CODEX_API_KEY`).",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY"),
        description="OpenAI API key, used when CODEX_API_KEY is not set; handed to Codex as "
        "CODEX_API_KEY.",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("AGENTFARM_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="Responses API endpoint for Codex runs (a proxy or gateway), e.g. "
        "`https://gateway.example/v1`; `OPENAI_BASE_URL` is read too, or `agentfarm secret set "
        "OPENAI_BASE_URL`; default: OpenAI's. Handed to Codex as a provider in `-c` flags.",
    )
    github_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("GITHUB_TOKEN"),
        description="Token with which kubernetes runs clone and push https://github.com "
        "repositories (or `agentfarm secret set GITHUB_TOKEN`).",
    )
    forgejo_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FORGEJO_TOKEN"),
        description="Token for the Forgejo of AGENTFARM_K8S_FORGEJO_URL (or `agentfarm secret "
        "set FORGEJO_TOKEN`); other hosts: `agentfarm secret set GIT_TOKEN_<HOST>`.",
    )

    @classmethod
    def load(cls, **given: Any) -> Settings:
        """The environment's settings with the values given on the command line over them
        (None: not given). A command builds them once and passes them down; nothing is written
        back into the environment for later code to find."""
        return cls(**{name: value for name, value in given.items() if value is not None})

    # --- paths derived from data_dir -------------------------------------------------------
    def prices(self) -> dict[str, pricing.ModelPrice]:
        """The price table: the built-in one with ``model_prices`` over it."""
        return pricing.table(self.model_prices)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "agentfarm.db"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "token"

    @property
    def secrets_path(self) -> Path:
        return self.data_dir / "secrets.json"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def vapid_key_path(self) -> Path:
        return self.data_dir / "vapid_private.pem"

    def ensure_dirs(self) -> None:
        # 0711: the sandbox uid must traverse to its own workspace, but may not list anything.
        for path in (self.data_dir, self.runs_dir):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o711)

    def is_loopback(self) -> bool:
        if self.host in ("localhost", ""):
            return self.host == "localhost"
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def public_host(self) -> str | None:
        """The host name of ``public_url``, lowercased; None when unset."""
        if not self.public_url:
            return None
        return urlsplit(self.public_url).hostname

    def api_token(self) -> str:
        """The API token: from the environment, else from the data directory (made once)."""
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        return read_or_create_token(self.token_path)


def read_or_create_token(path: Path) -> str:
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = "af_" + _secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value
