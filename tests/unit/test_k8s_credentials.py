"""Git credentials for kubernetes runs (item 6), above the backend: a repository URL with
credentials in it is refused, and the stored git tokens are handed to the backend, which puts
the one for the run's host in the run's Secret (tests/unit/test_k8s_manifests.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from agentfarm.backends.fake import FakeBackend
from agentfarm.domain import models
from agentfarm.store import Store
from agentfarm.web.app import create_app

from .conftest import make_settings, serve_app


@pytest.mark.parametrize(
    "repo",
    [
        "https://x-access-token:ghp_abcdef@github.com/o/r.git",
        "https://ghp_abcdef@github.com/o/r.git",
        "http://user:pw@git.lan:3000/o/r.git",
        "ssh://git:pw@git.lan/o/r.git",
    ],
)
async def test_a_repository_url_with_credentials_is_422_pointing_at_secret_set(
    tmp_path: Path, repo: str
) -> None:
    app = create_app(make_settings(tmp_path), backends={"local": FakeBackend()})
    async with serve_app(app) as client:
        for path, body in (
            ("/api/runs", {"spec": {"repo": repo, "prompt": "p"}}),
            ("/api/configs", {"name": "c", "repo": repo, "prompt": "p"}),
        ):
            response = await client.post(path, json=body)
            assert response.status_code == 422, response.text
            assert "agentfarm secret set" in response.text
            assert "ghp_abcdef" not in response.text and ":pw@" not in response.text
        ok = await client.post("/api/runs", json={"spec": {"repo": "ssh://git@h/r", "prompt": "p"}})
        assert ok.status_code == 201, ok.text


async def wait_launched(backend: FakeBackend, run_id: str) -> dict[str, str]:
    async with asyncio.timeout(10):
        while run_id not in backend.secrets:
            await asyncio.sleep(0.01)
    return backend.secrets[run_id]


async def test_git_tokens_reach_kubernetes_runs_only(tmp_path: Path) -> None:
    k8s, local = FakeBackend(), FakeBackend()
    settings = make_settings(tmp_path, github_token="ghp_from_the_environment")
    app = create_app(settings, backends={"local": local, "kubernetes": k8s})
    async with serve_app(app) as client:
        for name, value in (("GIT_TOKEN_GIT_LAN", "lan-token"), ("FORGEJO_TOKEN", "fj")):
            response = await client.put(f"/api/secrets/{name}", json={"value": value})
            assert response.status_code == 204, response.text
        spec = {"repo": "https://github.com/o/r.git", "prompt": "p"}
        on_k8s = await client.post("/api/runs", json={"spec": spec | {"backend": "kubernetes"}})
        on_local = await client.post("/api/runs", json={"spec": spec})
        assert on_k8s.status_code == on_local.status_code == 201
        handed = await wait_launched(k8s, on_k8s.json()["id"])
        assert handed["GITHUB_TOKEN"] == "ghp_from_the_environment"
        assert handed["GIT_TOKEN_GIT_LAN"] == "lan-token"
        assert handed["FORGEJO_TOKEN"] == "fj"
        local_handed = await wait_launched(local, on_local.json()["id"])
        assert not {"GITHUB_TOKEN", "GIT_TOKEN_GIT_LAN", "FORGEJO_TOKEN"} & set(local_handed)
        await _drain(client, on_k8s.json()["id"], on_local.json()["id"])


async def _drain(client: httpx.AsyncClient, *run_ids: str) -> None:
    async with asyncio.timeout(10):
        for run_id in run_ids:
            while (await client.get(f"/api/runs/{run_id}")).json()["status"] not in (
                "succeeded",
                "failed",
            ):
                await asyncio.sleep(0.02)


def plant_legacy_repo(db: Path, repo: str) -> None:
    """Write ``repo`` into every stored run and config, as rows from an older version hold."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        for table in ("runs", "configs"):
            for id_, spec in conn.execute(f"SELECT id, spec FROM {table}").fetchall():  # noqa: S608
                data = json.loads(spec) | {"repo": repo}
                conn.execute(
                    f"UPDATE {table} SET spec = ? WHERE id = ?",  # noqa: S608
                    (json.dumps(data), id_),
                )


async def test_runs_and_configs_stored_with_credentials_load_without_them(tmp_path: Path) -> None:
    """Rows written before such URLs were refused still load (listing them must not fail),
    and the secret is not shown again."""
    db = tmp_path / "agentfarm.db"
    store = await Store.open(db)
    try:
        run = models.Run(spec=models.AgentSpec(repo="/r"))
        await store.create_run(run)
        await store.create_config(models.AgentConfig(name="legacy", repo="/r"))
        legacy = "https://x-access-token:ghp_legacy@github.com/o/r.git"
        await asyncio.to_thread(plant_legacy_repo, db, legacy)
        assert (await store.get_run(run.id)).spec.repo == "https://github.com/o/r.git"
        loaded = await store.get_config("legacy")
        assert loaded.spec().repo == "https://github.com/o/r.git"
        assert [c.repo for c in await store.list_configs()] == ["https://github.com/o/r.git"]
    finally:
        await store.close()
