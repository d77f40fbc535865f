"""The forge form: a forge as form values, and form values back into forge settings with one
message per field. The token and the webhook secret are write-only: the form never carries
their values back, and an empty field keeps what is stored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic
from pydantic import SecretStr

from agentfarm.domain import pipeline as domain

#: The state labels' form fields, by the StateLabels field each one sets.
STATE_LABEL_FIELDS = {name: f"label_{name}" for name in domain.StateLabels.model_fields}
CHECKBOXES = ("stop_on_unlabel", "closes_issue", "draft")
TEXT = ("kind", "base_url", "token_secret", "label", "config", "mention")
NUMBERS = ("poll_seconds", "check_fix_attempts", "check_fix_window_minutes")
#: What a field's pattern means, in words (pydantic's message shows the regular expression).
PATTERN_WORDS = {
    "name": "use lowercase letters, digits and '-' (starting and ending with a letter or digit)",
    "token_secret": "a secret name: letters, digits and _ (e.g. GITHUB_TOKEN)",
    "repos": "write each repository as owner/name, one per line",
    "config": "a config name: lowercase letters, digits and '-'",
    "mention": "write @ and a user name, e.g. @agentfarm",
    "label": "a label name without commas or control characters",
    **dict.fromkeys(STATE_LABEL_FIELDS.values(), "a label name without commas"),
}
KINDS = ("github", "forgejo", "gitea")
#: What a new forge's form starts with (its repositories empty).
NEW_FORGE = domain.ForgeSettings(
    kind="github",
    base_url="https://api.github.com",
    token_secret="GITHUB_TOKEN",  # noqa: S106 (a secret's name)
    repos=["owner/name"],
)


def values_of(forge: domain.Forge | None) -> dict[str, str]:
    """The form's values for ``forge``, or a new forge's defaults."""
    values = {"name": forge.name if forge else ""}
    shown: domain.ForgeSettings = forge or NEW_FORGE
    settings = {name: getattr(shown, name) for name in domain.ForgeSettings.model_fields}
    for name in TEXT:
        values[name] = "" if settings[name] is None else str(settings[name])
    for name in NUMBERS:
        values[name] = str(settings[name])
    for name in CHECKBOXES:
        values[name] = "1" if settings[name] else ""
    values["repos"] = "\n".join(settings["repos"]) if forge else ""
    labels: domain.StateLabels = settings["state_labels"]
    for name, form in STATE_LABEL_FIELDS.items():
        values[form] = getattr(labels, name)
    return values


def secret_of(values: Mapping[str, str], name: str) -> SecretStr | None:
    value = values.get(name, "").strip()
    return SecretStr(value) if value else None


def _field_of(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "name"
    if loc[0] == "state_labels" and len(loc) > 1:
        return STATE_LABEL_FIELDS.get(str(loc[1]), "label_in_progress")
    return str(loc[0])


def parse(
    values: Mapping[str, str], *, new: bool
) -> tuple[domain.ForgeIn | domain.ForgeSettings | None, dict[str, str]]:
    """Form values as a new forge (``new``) or as a forge's settings: the model, or the
    problems by form field. A checkbox counts as ticked when the last value sent is ``1``
    (the form sends a hidden ``0`` before each)."""
    body: dict[str, Any] = {name: values.get(name, "").strip() for name in TEXT}
    body["config"] = body["config"] or None
    for name in NUMBERS:
        body[name] = values.get(name, "").strip() or None
        if body[name] is None:
            del body[name]
    for name in CHECKBOXES:
        body[name] = values.get(name, "") == "1"
    body["repos"] = [line.strip() for line in values.get("repos", "").splitlines() if line.strip()]
    body["state_labels"] = {
        name: values.get(form, "").strip() for name, form in STATE_LABEL_FIELDS.items()
    }
    model: type[domain.ForgeIn] | type[domain.ForgeSettings] = domain.ForgeSettings
    if new:
        model = domain.ForgeIn
        body["name"] = values.get("name", "").strip()
        body["token"] = secret_of(values, "token")
        body["webhook_secret"] = secret_of(values, "webhook_secret")
    try:
        return model.model_validate(body), {}
    except pydantic.ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors():
            field = _field_of(err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "string_pattern_mismatch":
                message = PATTERN_WORDS.get(field, message)
            problems.setdefault(field, message)
        return None, problems
