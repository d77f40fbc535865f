"""Where and how a run's agent runs: one config class per backend, told apart by ``type``
(a discriminated union, as SWE-ReX does it), each refusing fields it does not know.

A config from before this union (``backend: local`` and top-level ``sandbox`` and
``kubernetes`` blocks, one of them ignored) is read by :func:`from_legacy_shape` where that is
unambiguous; migration 0004 rewrote the stored ones.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentfarm.domain import egress as egress_policy

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


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
    egress: list[
        Annotated[
            str, Field(max_length=300, json_schema_extra={"pattern": egress_policy.ENTRY_PATTERN})
        ]
    ] = Field(
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


class LocalSpec(_Strict):
    """The `local` backend: a bubblewrap sandbox on this host."""

    type: Literal["local"] = "local"
    sandbox: SandboxSpec = Field(
        default_factory=SandboxSpec, description="Isolation, network and limits."
    )

    @property
    def model_credentials_required(self) -> bool:
        return True

    @property
    def clones_remotely(self) -> bool:
        """The host clones and pushes, with its own git credentials."""
        return False

    def out_of_memory(self) -> str:
        limit = self.sandbox.memory_mb
        return f"the agent ran out of memory (limit {limit} MiB) and was killed; raise " + (
            "backend.sandbox.memory_mb"
        )


class KubernetesSpec(_Strict):
    """The `kubernetes` backend: where and how a pod runs the agent; unset fields take the
    server's `AGENTFARM_K8S_*` defaults."""

    type: Literal["kubernetes"] = "kubernetes"
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

    @property
    def model_credentials_required(self) -> bool:
        """`shared-home` pods log in with the shared ~/.claude instead."""
        return self.credentials != "shared-home"

    @property
    def clones_remotely(self) -> bool:
        """The pod clones and pushes: it needs the git token of the run's repository host."""
        return True

    def out_of_memory(self) -> str:
        limit = self.resources.limits.memory or "the server's default"
        return f"the agent ran out of memory (limit {limit}) and was killed; raise " + (
            "backend.resources.limits.memory"
        )


#: Where and how a run's agent runs: one of the backends, told apart by ``type``.
BackendSpec = Annotated[LocalSpec | KubernetesSpec, Field(discriminator="type")]


def _block(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


def from_legacy_shape(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    backend = data.pop("backend", "local")
    sandbox, k8s = _block(data.pop("sandbox", None)), _block(data.pop("kubernetes", None))
    if not isinstance(backend, str):
        if sandbox is not None or k8s is not None:
            raise ValueError(
                "`sandbox` and `kubernetes` go inside `backend` (`backend: {type: local, "
                "sandbox: ...}` or `backend: {type: kubernetes, ...}`), not beside it"
            )
        return {**data, "backend": backend}
    if backend == "kubernetes":
        # Every config used to carry a sandbox block: the default one says nothing.
        if sandbox is not None and SandboxSpec.model_validate(sandbox) != SandboxSpec():
            raise ValueError(
                "a `sandbox` block has no effect with backend kubernetes: remove it, or use "
                "`backend: {type: local, sandbox: ...}`"
            )
        return {**data, "backend": {**(k8s or {}), "type": "kubernetes"}}
    if k8s is not None:
        raise ValueError(
            f"a `kubernetes` block has no effect with backend {backend}: remove it, or use "
            "`backend: {type: kubernetes, ...}`"
        )
    block: dict[str, Any] = {"type": backend}
    if sandbox is not None:
        block["sandbox"] = sandbox
    return {**data, "backend": block}
