"""Write docs/configuration.md from the settings and config models (tests check it is current).

.venv/bin/python scripts/gen_config_docs.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agentfarm.domain import models
from agentfarm.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

HEADER = """# Configuration reference

Generated from the code by `scripts/gen_config_docs.py`; a test fails when it is out of date.

## Server settings

Read from the environment when the server starts; `agentfarm serve --host/--port/--data-dir`
override the matching variables.

| variable | default | meaning |
|---|---|---|
"""

CONFIG_INTRO = """
## Agent configs

A config is saved with `POST /api/configs` or `agentfarm config add` (flags, or `--file` with
YAML/JSON holding these fields). `POST /api/runs` takes `{"config": "<id-or-name>", "prompt":
"<optional override>"}` or `{"spec": {...}}` with the same fields but `name`.

`backend` is one of two shapes, told apart by `type`: `{type: local, sandbox: {...}}` or
`{type: kubernetes, namespace: ..., image: ..., ...}`; each refuses fields of the other.

Deprecated: the shape before it, `backend: local` (or `kubernetes`) with top-level `sandbox`
and `kubernetes` blocks, is still read where it is unambiguous: the block for the chosen
backend moves into `backend`, and a default `sandbox` block beside `backend: kubernetes` is
dropped. A block that would have no effect (a `kubernetes` block with `backend: local`, a
`sandbox` block that sets something with `backend: kubernetes`, either beside a `backend`
object) is refused with a 422 that says so. Stored configs and runs were rewritten by the
store's migration 0004.

| field | default | meaning |
|---|---|---|
"""


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        if info.default_factory.__name__ == "default_data_dir":
            return "`$XDG_DATA_HOME/agentfarm` (`~/.local/share/agentfarm`)"
        value: Any = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{value!r}`" if value not in ({}, []) else "empty"
    if info.is_required():
        return "required"
    if info.default is None:
        return "unset"
    default = info.default.value if hasattr(info.default, "value") else info.default
    return f"`{default}`"


def _env_name(name: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return f"AGENTFARM_{name.upper()}"


def _model_rows(model: type[BaseModel], prefix: str = "", when: str = "") -> list[str]:
    """One row per field, then the fields of nested models; a union of models (the backend)
    gets each member's fields, marked with the ``type`` that selects them."""
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel], str]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        subs = [
            a
            for a in (annotation, *getattr(annotation, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        description = (info.description or "").replace("|", "\\|").replace("\n", " ")
        if name == "type" and when:
            continue  # said by the marker on every row of this member
        rows.append(f"| `{prefix}{name}` | {_default(info)} | {when}{description} |")
        for sub in subs:
            tag = sub.model_fields.get("type")
            mark = f"(`type: {tag.default}`) " if tag is not None and len(subs) > 1 else when
            nested.append((f"{prefix}{name}.", sub, mark))
    for sub_prefix, sub, mark in nested:
        rows += _model_rows(sub, sub_prefix, mark)
    return rows


def render() -> str:
    lines = [HEADER.rstrip("\n")]
    for name, info in Settings.model_fields.items():
        description = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{_env_name(name, info)}` | {_default(info)} | {description} |")
    lines.append(CONFIG_INTRO.rstrip("\n"))
    lines += _model_rows(models.ConfigIn)
    lines.append(
        "\n## CLI\n\nThe CLI is a client of the API: `AGENTFARM_URL` (default "
        "`http://127.0.0.1:8080`) and `AGENTFARM_TOKEN` (default: the token file in the data "
        "directory, when on the server's machine)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if DOC.read_text() == text else 1)
    DOC.write_text(text)
