"""Store migrations: the schema they build is the one the code expects, and upgrades work."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sqlite3
import tomllib
from pathlib import Path

import pytest

from agentfarm.domain import backend_config, errors, models
from agentfarm.store import Store, mapping, schema

ROOT = Path(__file__).resolve().parents[2]

LATER_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("configs", sa.Column("notes", sa.Text(), nullable=True))
"""

FAILING_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "0007"


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    raise RuntimeError("migration failed halfway")
"""


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def scripts_with(tmp_path: Path, revision: str) -> Path:
    location = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, location, ignore=shutil.ignore_patterns("__pycache__"))
    (location / "versions" / "0099_later.py").write_text(revision)
    return location


def test_the_schema_is_what_the_code_expects(tmp_path: Path) -> None:
    path = tmp_path / "agentfarm.db"
    schema.migrate(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert tables(conn) == {
            "alembic_version",
            "configs",
            "runs",
            "events",
            "users",
            "sessions",
            "api_tokens",
            "forges",
            "forge_deliveries",
            "tracked_issues",
            "attempts",
            "flags",
            "dispatches",
            "push_subscriptions",
        }
        assert columns(conn, "configs") == set(mapping.CONFIG_COLUMNS)
        assert columns(conn, "runs") == set(mapping.RUN_COLUMNS + mapping.RUN_EXTRA_COLUMNS)
        assert columns(conn, "events") == set(mapping.EVENT_COLUMNS)
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(runs)")}
        assert {"ix_runs_created_at", "ix_runs_status"} <= indexes
        pk = sorted((r[5], r[1]) for r in conn.execute("PRAGMA table_info(events)") if r[5])
        assert pk == [(1, "run_id"), (2, "seq")]
        fks = [(r[2], r[3], r[4], r[6]) for r in conn.execute("PRAGMA foreign_key_list(events)")]
        assert fks == [("runs", "run_id", "id", "CASCADE")]


def test_every_run_field_has_a_column() -> None:
    # A new Run field needs a migration and a place in mapping.RUN_COLUMNS.
    assert set(mapping.RUN_COLUMNS + mapping.RUN_IN_SPEC) == set(models.Run.model_fields)
    assert mapping.CONFIG_COLUMNS[:2] == ("id", "name")


async def test_open_migrates_to_head_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "agentfarm.db"
    path.touch()  # an empty file
    await (await Store.open(path)).close()
    assert schema.current_revision(path) == schema.head_revision() == "0007"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        before = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    await (await Store.open(path)).close()
    assert schema.current_revision(path) == schema.head_revision()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall() == before


async def test_a_database_at_head_upgrades_to_a_later_one(tmp_path: Path) -> None:
    path = tmp_path / "agentfarm.db"
    store = await Store.open(path)
    cfg = await store.create_config(models.AgentConfig(name="keep-me", repo="/r"))
    await store.close()

    location = scripts_with(tmp_path, LATER_REVISION)
    assert schema.head_revision(location) == "0099"
    schema.migrate(path, script_location=location)
    assert schema.current_revision(path) == "0099"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert "notes" in columns(conn, "configs")
        assert conn.execute("SELECT name FROM configs").fetchall() == [(cfg.name,)]


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "agentfarm.db"
    schema.migrate(path)
    with pytest.raises(RuntimeError, match="halfway"):
        schema.migrate(path, script_location=scripts_with(tmp_path, FAILING_REVISION))
    assert schema.current_revision(path) == "0007"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert "half_done" not in tables(conn)


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agentfarm.db"
    schema.migrate(path, script_location=scripts_with(tmp_path, LATER_REVISION))
    with pytest.raises(errors.ConfigurationError, match="upgrade agentfarm"):
        await Store.open(path)


def test_the_migration_scripts_are_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["agentfarm"]
    package = ROOT / "src" / "agentfarm"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    needed = {
        p for p in schema.MIGRATIONS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    assert needed, "no migration scripts found"
    assert needed <= shipped, f"not in package-data: {sorted(map(str, needed - shipped))}"


def scripts_up_to(tmp_path: Path, last: str) -> Path:
    """The migration scripts as they were when ``last`` was the newest."""
    location = tmp_path / f"migrations-{last}"
    shutil.copytree(schema.MIGRATIONS_DIR, location, ignore=shutil.ignore_patterns("__pycache__"))
    for script in (location / "versions").glob("*.py"):
        if script.name[:4] > last:
            script.unlink()
    return location


#: Specs as the schema before 0004 stored them: `backend` a name, both blocks beside it.
OLD_LOCAL = {
    "repo": "/r", "prompt": "p", "backend": "local", "kubernetes": None,
    "sandbox": {"mode": "bwrap", "network": False, "egress": [], "memory_mb": 512,
                "cpus": 1.5, "pids": 1024},
}  # fmt: skip
OLD_K8S = {
    "repo": "https://git.example.org/o/r.git", "prompt": "p", "backend": "kubernetes",
    "sandbox": {"mode": "bwrap", "network": "open", "memory_mb": 4096},
    "kubernetes": {"namespace": "agents", "runtime_class": "kata-fc",
                   "credentials": "shared-home"},
}  # fmt: skip


async def test_0004_moves_stored_configs_and_runs_into_the_backend_union(tmp_path: Path) -> None:
    path = tmp_path / "agentfarm.db"
    schema.migrate(path, script_location=scripts_up_to(tmp_path, "0003"))
    assert schema.current_revision(path) == "0003"
    now = "2026-01-01T00:00:00.000000+00:00"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for name, spec in (("local-cfg", OLD_LOCAL), ("k8s-cfg", OLD_K8S)):
            conn.execute(
                "INSERT INTO configs (id, name, spec, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (f"id-{name}", name, json.dumps(spec), now, now),
            )
        for run_id, spec in (("0123456789aa", OLD_LOCAL), ("0123456789bb", OLD_K8S)):
            conn.execute(
                "INSERT INTO runs (id, spec, status, created_at, usage) VALUES (?, ?, ?, ?, ?)",
                (run_id, json.dumps(spec), "succeeded", now, "{}"),
            )

    store = await Store.open(path)
    try:
        assert schema.current_revision(path) == "0007"
        local_cfg, k8s_cfg = [await store.get_config(n) for n in ("local-cfg", "k8s-cfg")]
        local_run, k8s_run = [await store.get_run(i) for i in ("0123456789aa", "0123456789bb")]
    finally:
        await store.close()
    for local in (local_cfg, local_run.spec):
        assert local.backend == backend_config.LocalSpec(
            sandbox=backend_config.SandboxSpec(network="none", memory_mb=512, cpus=1.5)
        )
    for k8s in (k8s_cfg, k8s_run.spec):
        assert k8s.backend == backend_config.KubernetesSpec(
            namespace="agents", runtime_class="kata-fc", credentials="shared-home"
        )
    with contextlib.closing(sqlite3.connect(path)) as conn:
        stored = [json.loads(r[0]) for r in conn.execute("SELECT spec FROM runs ORDER BY id")]
    assert [set(s) & {"sandbox", "kubernetes"} for s in stored] == [set(), set()]
    assert [s["backend"]["type"] for s in stored] == ["local", "kubernetes"]


def test_0004_downgrade_gives_back_the_old_shape() -> None:
    spec = importlib.util.spec_from_file_location(
        "m0004", schema.MIGRATIONS_DIR / "versions" / "0004_backend_union.py"
    )
    assert spec is not None and spec.loader is not None
    m0004 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m0004)
    local = {**OLD_LOCAL}
    assert m0004.from_union(m0004.to_union(local)) == local
    k8s = {key: value for key, value in OLD_K8S.items() if key != "sandbox"}
    assert m0004.from_union(m0004.to_union(OLD_K8S)) == k8s
    # Already in the new shape (a half-migrated copy): left as it is.
    new = m0004.to_union(OLD_K8S)
    assert m0004.to_union(new) == new
