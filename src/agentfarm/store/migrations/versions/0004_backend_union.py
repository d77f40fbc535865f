"""Backend configuration as a discriminated union: a stored spec's ``backend: "local"`` (or
``"kubernetes"``) and its top-level ``sandbox`` and ``kubernetes`` blocks become one
``backend: {type: local, sandbox: {...}}`` or ``backend: {type: kubernetes, ...}``, in configs
and in runs. The block the old shape ignored (a kubernetes run's sandbox, a local one's
``kubernetes: null``) is dropped, as it never took effect.

The rewrite works on the JSON text alone (no models), so that later changes to the models do
not change what this migration does.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

#: Both tables have ``id`` and ``spec``; the statements are fixed text (no names from input).
_STATEMENTS = {
    table: (f"SELECT id, spec FROM {table}", f"UPDATE {table} SET spec = :spec WHERE id = :id")  # noqa: S608
    for table in ("configs", "runs")
}


def to_union(spec: dict[str, Any]) -> dict[str, Any]:
    backend = spec.get("backend", "local")
    if isinstance(backend, dict):  # already in the new shape
        return spec
    spec = dict(spec)
    spec.pop("backend", None)
    sandbox, k8s = spec.pop("sandbox", None), spec.pop("kubernetes", None)
    if backend == "kubernetes":
        spec["backend"] = {**(k8s or {}), "type": "kubernetes"}
    else:
        spec["backend"] = {"type": "local", **({"sandbox": sandbox} if sandbox else {})}
    return spec


def from_union(spec: dict[str, Any]) -> dict[str, Any]:
    backend = spec.get("backend")
    if not isinstance(backend, dict):
        return spec
    spec, block = dict(spec), dict(backend)
    kind = block.pop("type", "local")
    spec["backend"] = kind
    if kind == "kubernetes":
        spec["kubernetes"] = block
    else:
        spec["kubernetes"] = None
        if "sandbox" in block:
            spec["sandbox"] = block["sandbox"]
    return spec


def _rewrite(change: Any) -> None:
    conn = op.get_bind()
    for select, update in _STATEMENTS.values():
        rows = conn.execute(sa.text(select)).fetchall()
        for row_id, text in rows:
            before = json.loads(text)
            after = change(before)
            if after != before:
                conn.execute(
                    sa.text(update),
                    {"spec": json.dumps(after, separators=(",", ":")), "id": row_id},
                )


def upgrade() -> None:
    _rewrite(to_union)


def downgrade() -> None:
    _rewrite(from_union)
