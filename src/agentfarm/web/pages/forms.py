"""The config form: a saved config as form values, and form values back into a config with
one message per field. The form shows part of a config; what it does not show is kept."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic
from fastapi import Request

from agentfarm.domain import backend_config, models

FIELDS = (
    "name",
    "repo",
    "prompt",
    "base_branch",
    "model",
    "permission_mode",
    "max_turns",
    "allowed_tools",
    "disallowed_tools",
    "append_system_prompt",
    "env",
    "backend",
    "sandbox_mode",
    "network",
    "egress",
    "memory_mb",
)


def values_of(cfg: models.ConfigIn | None) -> dict[str, str]:
    """The form's values for ``cfg``, or a new config's defaults."""
    if cfg is None:
        return {"permission_mode": "bypassPermissions", "backend": "local",
                "sandbox_mode": "bwrap", "network": "allowlist", "memory_mb": "4096"}  # fmt: skip
    box = (
        cfg.backend.sandbox
        if isinstance(cfg.backend, backend_config.LocalSpec)
        else backend_config.SandboxSpec()
    )
    return {
        "name": cfg.name,
        "repo": cfg.repo,
        "prompt": cfg.prompt,
        "base_branch": cfg.base_branch or "",
        "model": cfg.model or "",
        "permission_mode": cfg.permission_mode,
        "max_turns": str(cfg.max_turns or ""),
        "allowed_tools": "\n".join(cfg.allowed_tools),
        "disallowed_tools": "\n".join(cfg.disallowed_tools),
        "append_system_prompt": cfg.append_system_prompt or "",
        "env": "\n".join(f"{k}={v}" for k, v in cfg.env.items()),
        "backend": cfg.backend.type,
        "sandbox_mode": box.mode,
        "network": box.network,
        "egress": "\n".join(box.egress),
        "memory_mb": str(box.memory_mb or ""),
    }


def parse_config(
    values: Mapping[str, str], base: models.ConfigIn | None
) -> tuple[models.ConfigIn | None, dict[str, str]]:
    """Form values over ``base`` (fields the form does not show are kept): the config, or the
    problems by form field."""
    problems: dict[str, str] = {}
    body: dict[str, Any] = (
        base.model_dump(include=set(models.ConfigIn.model_fields)) if base else {}
    )

    def lines(name: str) -> list[str]:
        return [
            x.strip() for x in values.get(name, "").replace(",", "\n").splitlines() if x.strip()
        ]

    previous: dict[str, Any] = body.get("backend") or {}
    kind = values.get("backend", "").strip()
    for name in ("name", "repo", "prompt", "permission_mode"):
        body[name] = values.get(name, "").strip() if name != "prompt" else values.get(name, "")
    for name in ("base_branch", "model", "append_system_prompt"):
        body[name] = values.get(name, "").strip() or None
    body["allowed_tools"] = lines("allowed_tools")
    body["disallowed_tools"] = lines("disallowed_tools")
    for name, target in (("max_turns", "max_turns"),):
        raw = values.get(name, "").strip()
        body[target] = raw or None
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
    if kind == "local":
        sandbox = dict(previous.get("sandbox") or {})
        sandbox["mode"] = values.get("sandbox_mode", "bwrap")
        sandbox["network"] = values.get("network", "allowlist")
        sandbox["egress"] = lines("egress")
        sandbox["memory_mb"] = values.get("memory_mb", "").strip() or None
        body["backend"] = {"type": kind, "sandbox": sandbox}
    else:  # the form has no fields of other backends yet: keep what the config had
        body["backend"] = {**(previous if previous.get("type") == kind else {}), "type": kind}
    try:
        parsed = models.ConfigIn.model_validate(body)
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            field = loc[0] if loc else "name"
            if field == "backend" and "sandbox" in loc[:-1]:
                after = loc[loc.index("sandbox") + 1]
                field = {"mode": "sandbox_mode"}.get(after, after)
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.setdefault(field if field in FIELDS else "name", message)
        return None, problems
    return (None, problems) if problems else (parsed, problems)


async def read(request: Request) -> dict[str, str]:
    """A posted form's text fields (files are not part of any form here)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}
