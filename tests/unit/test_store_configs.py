"""Store: agent configs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentfarm.domain import backend_config, errors, models
from agentfarm.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "agentfarm.db")
    yield store
    await store.close()


def make_config(name: str = "fix-bugs", **kwargs: object) -> models.AgentConfig:
    return models.AgentConfig.model_validate({"name": name, "repo": "/srv/repo", **kwargs})


async def test_create_then_get_by_id_and_by_name(store: Store) -> None:
    cfg = make_config(
        prompt="Fix it",
        model="opus",
        allowed_tools=["Bash(git:*)", "Edit"],
        env={"FOO": "bar"},
        max_turns=7,
        sandbox={"network": False, "cpus": 1.5},
    )
    assert await store.create_config(cfg) == cfg
    assert await store.get_config(cfg.id) == cfg
    assert await store.get_config("fix-bugs") == cfg
    got = await store.get_config("fix-bugs")
    assert got.created_at.tzinfo is not None
    assert got.spec() == cfg.spec()


async def test_duplicate_name_is_a_conflict(store: Store) -> None:
    await store.create_config(make_config())
    with pytest.raises(errors.ConflictError, match="fix-bugs"):
        await store.create_config(make_config())
    assert len(await store.list_configs()) == 1


async def test_duplicate_id_is_a_conflict(store: Store) -> None:
    cfg = await store.create_config(make_config())
    with pytest.raises(errors.ConflictError, match=cfg.id):
        await store.create_config(make_config("other", id=cfg.id))


async def test_unknown_config_is_not_found(store: Store) -> None:
    with pytest.raises(errors.NotFoundError, match="nope"):
        await store.get_config("nope")
    with pytest.raises(errors.NotFoundError):
        await store.delete_config("nope")
    with pytest.raises(errors.NotFoundError):
        await store.update_config(make_config())


async def test_list_is_ordered_by_name(store: Store) -> None:
    for name in ("zeta", "alpha", "mid"):
        await store.create_config(make_config(name))
    assert [c.name for c in await store.list_configs()] == ["alpha", "mid", "zeta"]


async def test_update_renames_keeps_created_at_and_bumps_updated_at(store: Store) -> None:
    cfg = await store.create_config(make_config())
    changed = cfg.model_copy(
        update={"name": "renamed", "prompt": "new", "created_at": datetime(2000, 1, 1, tzinfo=UTC)}
    )
    updated = await store.update_config(changed)
    assert updated.name == "renamed"
    assert updated.prompt == "new"
    assert updated.created_at == cfg.created_at
    assert updated.updated_at > cfg.updated_at
    assert await store.get_config("renamed") == updated
    assert await store.get_config(cfg.id) == updated
    with pytest.raises(errors.NotFoundError):
        await store.get_config("fix-bugs")


async def test_update_to_a_taken_name_is_a_conflict(store: Store) -> None:
    await store.create_config(make_config("one"))
    two = await store.create_config(make_config("two"))
    with pytest.raises(errors.ConflictError, match="one"):
        await store.update_config(two.model_copy(update={"name": "one"}))
    assert (await store.get_config(two.id)).name == "two"


async def test_delete_by_id_or_name(store: Store) -> None:
    one = await store.create_config(make_config("one"))
    await store.create_config(make_config("two"))
    await store.delete_config(one.id)
    await store.delete_config("two")
    assert await store.list_configs() == []


async def test_an_id_match_wins_over_a_name_match(store: Store) -> None:
    first = await store.create_config(make_config("first"))
    # A config whose name happens to be the other config's id.
    tricky = await store.create_config(make_config(first.id))
    assert (await store.get_config(first.id)).id == first.id
    await store.delete_config(first.id)
    assert await store.get_config(first.id) == tricky


async def test_configs_stored_with_the_old_network_boolean_still_load(store: Store) -> None:
    cfg = await store.create_config(make_config())
    for stored, expected in ((True, "allowlist"), (False, "none")):

        def rewrite(conn: sqlite3.Connection, value: bool = stored) -> None:
            row = conn.execute("SELECT spec FROM configs WHERE id = ?", (cfg.id,)).fetchone()
            spec = json.loads(row[0])
            spec["backend"]["sandbox"]["network"] = value
            spec["backend"]["sandbox"].pop("egress", None)  # as stored before the field existed
            conn.execute("UPDATE configs SET spec = ? WHERE id = ?", (json.dumps(spec), cfg.id))

        await store.database.write(rewrite)
        loaded = await store.get_config(cfg.id)
        assert isinstance(loaded.backend, backend_config.LocalSpec)
        box = loaded.backend.sandbox
        assert box.network == expected and box.egress == []
