"""The config form: a saved config as form values, and form values back into a config with
one message per field. The form shows the fields of every backend and the page shows those of
the chosen one; only the chosen backend's fields are read. A field the post does not carry
keeps the config's value, so an older form (or a script) cannot clear what it never showed.

Node selector and tolerations are YAML (or JSON) text, as in a config file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic
import yaml
from fastapi import Request

from agentfarm.domain import backend_config, models

#: The local sandbox's form fields, by the SandboxSpec field each one sets.
SANDBOX_FIELDS = {
    "mode": "sandbox_mode",
    "network": "network",
    "egress": "egress",
    "memory_mb": "memory_mb",
    "cpus": "cpus",
    "pids": "pids",
}
#: The Kubernetes backend's plain form fields, by the KubernetesSpec field each one sets.
K8S_FIELDS = {
    name: f"k8s_{name}"
    for name in ("namespace", "runtime_class", "image", "credentials", "service_account")
}
#: Resource amounts: form field by (requests|limits, amount).
K8S_RESOURCES = {
    (side, amount): f"k8s_{side}_{amount}"
    for side in ("requests", "limits")
    for amount in ("cpu", "memory", "ephemeral_storage")
}
K8S_TEXT = {"node_selector": "k8s_node_selector", "tolerations": "k8s_tolerations"}
#: What a field's pattern means, in words (pydantic's message shows the regular expression).
PATTERN_WORDS = {
    **dict.fromkeys(
        ("k8s_namespace", "k8s_runtime_class", "k8s_service_account"),
        "use lowercase letters, digits and '-' (a DNS label of up to 63 characters)",
    ),
    **dict.fromkeys(K8S_RESOURCES.values(), 'write a Kubernetes quantity, e.g. "500m", "2", "4Gi"'),
}

#: The command agent's form fields, by the CommandSpec field each one sets.
COMMAND_FIELDS = {"argv": "command_argv", "prompt": "command_prompt"}

#: Budgets and caps, each a number or empty (docs/fleet.md).
LIMIT_FIELDS = (
    "max_budget_usd",
    "max_minutes",
    "max_concurrent",
    "daily_budget_usd",
    "monthly_budget_usd",
)

FIELDS = (
    "name",
    "agent",
    *COMMAND_FIELDS.values(),
    "repo",
    "prompt",
    "base_branch",
    "model",
    "permission_mode",
    "max_turns",
    "followup_window_seconds",
    *LIMIT_FIELDS,
    "allowed_tools",
    "disallowed_tools",
    "append_system_prompt",
    "env",
    "backend",
    *SANDBOX_FIELDS.values(),
    *K8S_FIELDS.values(),
    *K8S_RESOURCES.values(),
    *K8S_TEXT.values(),
)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _sandbox_values(box: backend_config.SandboxSpec) -> dict[str, str]:
    values = {SANDBOX_FIELDS[name]: _text(getattr(box, name)) for name in SANDBOX_FIELDS}
    values["egress"] = "\n".join(box.egress)
    return values


def _k8s_values(spec: backend_config.KubernetesSpec) -> dict[str, str]:
    values = {form: _text(getattr(spec, name)) for name, form in K8S_FIELDS.items()}
    for (side, amount), form in K8S_RESOURCES.items():
        values[form] = _text(getattr(getattr(spec.resources, side), amount))
    values["k8s_node_selector"] = _yaml(spec.node_selector)
    tolerations = [t.model_dump(exclude_none=True) for t in spec.tolerations]
    values["k8s_tolerations"] = _yaml(tolerations)
    return values


def _yaml(value: object) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False) if value else ""


def values_of(cfg: models.ConfigIn | None) -> dict[str, str]:
    """The form's values for ``cfg``, or a new config's defaults. Every backend's fields are
    filled (the other backend's with its defaults), so switching the backend starts from them."""
    backend = cfg.backend if cfg is not None else backend_config.LocalSpec()
    local = backend if isinstance(backend, backend_config.LocalSpec) else None
    k8s = backend if isinstance(backend, backend_config.KubernetesSpec) else None
    values = {
        "backend": backend.type,
        **_sandbox_values(local.sandbox if local else backend_config.SandboxSpec()),
        **_k8s_values(k8s or backend_config.KubernetesSpec()),
    }
    command = cfg.command if cfg is not None else None
    values["command_argv"] = "\n".join(command.argv) if command else ""
    values["command_prompt"] = command.prompt if command else "stdin"
    if cfg is None:
        return {"permission_mode": "bypassPermissions", "agent": "claude", **values}
    return {
        "name": cfg.name,
        "agent": cfg.agent,
        "repo": cfg.repo,
        "prompt": cfg.prompt,
        "base_branch": cfg.base_branch or "",
        "model": cfg.model or "",
        "permission_mode": cfg.permission_mode,
        "max_turns": str(cfg.max_turns or ""),
        "followup_window_seconds": str(cfg.followup_window_seconds or ""),
        **{name: _text(getattr(cfg, name)) for name in LIMIT_FIELDS},
        "allowed_tools": "\n".join(cfg.allowed_tools),
        "disallowed_tools": "\n".join(cfg.disallowed_tools),
        "append_system_prompt": cfg.append_system_prompt or "",
        "env": "\n".join(f"{k}={v}" for k, v in cfg.env.items()),
        **values,
    }


def _lines(values: Mapping[str, str], name: str) -> list[str]:
    raw = values.get(name, "").replace(",", "\n")
    return [x.strip() for x in raw.splitlines() if x.strip()]


def _local_backend(values: Mapping[str, str], previous: dict[str, Any]) -> dict[str, Any]:
    sandbox = dict(previous.get("sandbox") or {}) if previous.get("type") == "local" else {}
    sandbox["mode"] = values.get("sandbox_mode", "bwrap")
    sandbox["network"] = values.get("network", "allowlist")
    sandbox["egress"] = _lines(values, "egress")
    sandbox["memory_mb"] = values.get("memory_mb", "").strip() or None
    for name in ("cpus", "pids"):  # newer fields: an older form does not send them
        if name in values:
            sandbox[name] = values[name].strip() or None
    return {"type": "local", "sandbox": sandbox}


def _k8s_backend(
    values: Mapping[str, str], previous: dict[str, Any], problems: dict[str, str]
) -> dict[str, Any]:
    backend = dict(previous) if previous.get("type") == "kubernetes" else {}
    backend["type"] = "kubernetes"
    for name, form in K8S_FIELDS.items():
        if form in values:
            backend[name] = values[form].strip() or None
    if backend.get("credentials") is None:
        backend.pop("credentials", None)  # a choice, not an optional value: its default
    resources = backend.get("resources") or {}
    resources = {side: dict(resources.get(side) or {}) for side in ("requests", "limits")}
    for (side, amount), form in K8S_RESOURCES.items():
        if form in values:
            resources[side][amount] = values[form].strip() or None
    backend["resources"] = resources
    for name, form in K8S_TEXT.items():
        if form not in values:
            continue
        kind: type = dict if name == "node_selector" else list
        try:
            loaded = yaml.safe_load(values[form]) if values[form].strip() else kind()
        except yaml.YAMLError as exc:
            problems[form] = f"not YAML or JSON: {str(exc).splitlines()[0]}"
            continue
        if not isinstance(loaded, kind):
            shape = "a mapping of label: value" if kind is dict else "a list of tolerations"
            problems[form] = f"write {shape} (YAML or JSON)"
            continue
        backend[name] = loaded
    return backend


def _agent(values: Mapping[str, str], body: dict[str, Any]) -> None:
    """The agent kind and, for the command agent, its program (one argument per line, kept
    as written: an argument may hold spaces or commas). An older form keeps the config's."""
    if "agent" not in values:
        return
    body["agent"] = values["agent"].strip()
    if body["agent"] != "command":
        body["command"] = None
        return
    argv = [line.strip() for line in values.get("command_argv", "").splitlines() if line.strip()]
    body["command"] = {"argv": argv, "prompt": values.get("command_prompt", "stdin").strip()}


def _field_of(loc: list[str]) -> str:
    """The form field a validation error's location points at."""
    if not loc:
        return "name"
    if loc[0] == "command":
        return COMMAND_FIELDS.get(loc[1] if len(loc) > 1 else "", "command_argv")
    if loc[0] != "backend":
        return loc[0] if loc[0] in FIELDS else "name"
    rest = loc[2:] if len(loc) > 1 and loc[1] in ("local", "kubernetes") else loc[1:]
    if len(rest) >= 2 and rest[0] == "sandbox":
        return SANDBOX_FIELDS.get(rest[1], "backend")
    if len(rest) >= 3 and rest[0] == "resources":
        return K8S_RESOURCES.get((rest[1], rest[2]), "backend")
    if rest and rest[0] in K8S_FIELDS:
        return K8S_FIELDS[rest[0]]
    if rest and rest[0] in K8S_TEXT:
        return K8S_TEXT[rest[0]]
    return "backend"


def parse_config(
    values: Mapping[str, str], base: models.ConfigIn | None
) -> tuple[models.ConfigIn | None, dict[str, str]]:
    """Form values over ``base`` (fields the form does not show are kept): the config, or the
    problems by form field."""
    problems: dict[str, str] = {}
    body: dict[str, Any] = (
        base.model_dump(include=set(models.ConfigIn.model_fields)) if base else {}
    )
    previous: dict[str, Any] = body.get("backend") or {}
    for name in ("name", "repo", "prompt", "permission_mode"):
        body[name] = values.get(name, "").strip() if name != "prompt" else values.get(name, "")
    for name in ("base_branch", "model", "append_system_prompt"):
        body[name] = values.get(name, "").strip() or None
    body["allowed_tools"] = _lines(values, "allowed_tools")
    body["disallowed_tools"] = _lines(values, "disallowed_tools")
    body["max_turns"] = values.get("max_turns", "").strip() or None
    body["followup_window_seconds"] = values.get("followup_window_seconds", "").strip() or 0
    for name in LIMIT_FIELDS:
        body[name] = values.get(name, "").strip() or None
    env: dict[str, str] = {}
    for line in values.get("env", "").splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            problems["env"] = f"{line.strip()!r}: write KEY=VALUE, one per line"
            break
        env[key.strip()] = value
    body["env"] = env
    _agent(values, body)
    kind = values.get("backend", "").strip()
    if kind == "kubernetes":
        body["backend"] = _k8s_backend(values, previous, problems)
    elif kind == "local":
        body["backend"] = _local_backend(values, previous)
    else:  # the union names the choices in its message
        body["backend"] = {"type": kind}
    try:
        parsed = models.ConfigIn.model_validate(body)
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            field = _field_of([str(p) for p in err["loc"]])
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "string_pattern_mismatch":
                message = PATTERN_WORDS.get(field, message)
            problems.setdefault(field, message)
        return None, problems
    return (None, problems) if problems else (parsed, problems)


async def read(request: Request) -> dict[str, str]:
    """A posted form's text fields (files are not part of any form here)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}
