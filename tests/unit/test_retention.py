"""Retention and deletion of runs: the store's side, the sweep, the API, the cockpit, and the
data directory's disk use (all on the fake backend; the real files are in the integration
tests)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentfarm.backends.fake import FakeBackend, Step, claude_like_script
from agentfarm.backends.local.backend import LocalBackend
from agentfarm.domain import errors, models
from agentfarm.store import Store
from agentfarm.supervisor import retention
from agentfarm.supervisor.retention import Retention
from agentfarm.web.app import create_app

from .conftest import AppFactory, make_settings, serve_app
from .web_helpers import cockpit, login, page_csrf

NOW = models.utcnow()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "agentfarm.db")
    yield store
    await store.close()


async def ended_run(
    store: Store,
    hours_ago: float,
    status: models.RunStatus = models.RunStatus.succeeded,
    workspace: str | None = "/data/runs/x/workspace",
    backend: str = "local",
) -> models.Run:
    run = await store.create_run(
        models.Run(spec=models.AgentSpec(repo="/srv/repo", backend=backend))
    )
    await store.append_events(
        run.id,
        [models.EventDraft(type=models.EventType.run_status, data={"status": status.value})],
        run_fields={
            "status": status,
            "finished_at": NOW - timedelta(hours=hours_ago),
            "workspace": workspace,
            "branch": f"agentfarm/{run.id}",
        },
    )
    return await store.get_run(run.id)


# --- the store ---------------------------------------------------------------------------------
async def test_store_lists_ended_runs_that_still_have_files(store: Store) -> None:
    old = await ended_run(store, 50)
    await ended_run(store, 1)  # too recent
    await ended_run(store, 60, workspace=None)  # files already gone (or never made)
    active = await store.create_run(models.Run(spec=models.AgentSpec(repo="/r")))
    await store.update_run(active.id, workspace="/w", started_at=NOW - timedelta(hours=90))
    found = await store.runs_with_files(finished_before=NOW - timedelta(hours=24))
    assert [r.id for r in found] == [old.id]


async def test_store_deletes_an_ended_run_with_its_events_only(store: Store) -> None:
    gone, kept = await ended_run(store, 1), await ended_run(store, 1)
    active = await store.create_run(models.Run(spec=models.AgentSpec(repo="/r")))
    await store.delete_run(gone.id)
    with pytest.raises(errors.NotFoundError):
        await store.get_run(gone.id)
    assert await store.list_events(gone.id) == []
    assert await store.count_events(kept.id) == 1
    with pytest.raises(errors.NotFoundError, match="no run"):
        await store.delete_run(gone.id)
    with pytest.raises(errors.ConflictError, match="stop it first"):
        await store.delete_run(active.id)
    assert (await store.get_run(active.id)).status == models.RunStatus.queued


# --- the sweep ---------------------------------------------------------------------------------
async def test_sweep_removes_files_of_runs_ended_long_enough_ago(store: Store) -> None:
    # Fails before: nothing removed a finished run's files, ever.
    backend = FakeBackend()
    old, recent = await ended_run(store, 30), await ended_run(store, 2)
    sweep = Retention(store, {"local": backend}, retention_hours=24)
    assert await sweep.sweep(NOW) == [old.id]
    assert backend.cleaned == [old.id]
    after = await store.get_run(old.id)
    assert after.workspace is None and after.status == models.RunStatus.succeeded
    notes = [e.data["message"] for e in await store.list_events(old.id) if e.type == "run.notice"]
    assert len(notes) == 1 and "24 h" in notes[0] and after.branch in notes[0]
    assert (await store.get_run(recent.id)).workspace is not None
    assert await sweep.sweep(NOW) == []  # done once
    assert await sweep.sweep(NOW + timedelta(hours=23)) == [recent.id]


async def test_sweep_off_missing_backend_and_failing_cleanup(store: Store) -> None:
    class Failing(FakeBackend):
        async def cleanup(self, run: models.Run) -> None:
            raise errors.BackendError("the disk is on fire")

    k8s_run = await ended_run(store, 100, backend="kubernetes")
    local_run = await ended_run(store, 100)
    assert await Retention(store, {"local": FakeBackend()}, retention_hours=0).sweep(NOW) == []
    assert await Retention(store, {"local": Failing()}, retention_hours=1).sweep(NOW) == []
    assert (await store.get_run(local_run.id)).workspace is not None  # tried again later
    swept = await Retention(store, {"local": FakeBackend()}, retention_hours=1).sweep(NOW)
    assert swept == [local_run.id]
    assert (await store.get_run(k8s_run.id)).workspace is not None  # not enabled here


def test_sweep_interval_follows_the_retention_time() -> None:
    assert retention.interval(168) == retention.MAX_INTERVAL
    assert retention.interval(0.01) == 3.6
    assert retention.interval(0.00001) == retention.MIN_INTERVAL


async def test_the_server_sweeps_at_start(tmp_path: Path, fake_backend: FakeBackend) -> None:
    settings = make_settings(tmp_path / "data", retention_hours=24)
    settings.ensure_dirs()
    store = await Store.open(settings.db_path)
    old = await ended_run(store, 48)
    await store.close()
    app = create_app(settings, backends={"local": fake_backend})
    async with serve_app(app) as client:
        async with asyncio.timeout(10):
            while (await client.get(f"/api/runs/{old.id}")).json()["workspace"] is not None:
                await asyncio.sleep(0.01)
    assert fake_backend.cleaned == [old.id]


# --- the supervisor and the API ----------------------------------------------------------------
async def wait_terminal(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            run: dict[str, Any] = (await client.get(f"/api/runs/{run_id}")).json()
            if run["status"] in ("succeeded", "failed", "stopped", "lost"):
                return run
            await asyncio.sleep(0.01)


def slow_script(run: models.Run, command: Any) -> list[Step]:
    steps = claude_like_script(run, command)
    return [*steps[:2], Step("stdout", b"{}", delay=60), *steps[2:]]


async def test_raw_output_is_dropped_once_the_run_has_ended(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    # Fails before: the supervisor never told the backend its output was stored.
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        assert (await wait_terminal(client, run["id"]))["status"] == "succeeded"
        async with asyncio.timeout(10):
            while not fake_backend.runs[run["id"]].output_discarded:
                await asyncio.sleep(0.01)
        assert fake_backend.cleaned == []  # the files stay until retention or deletion


async def test_delete_run_through_the_api(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    # Fails before: there was no DELETE /api/runs/{id} (405).
    async with app_client() as client:
        done = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        await wait_terminal(client, done["id"])
        fake_backend.script = slow_script
        live = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        async with asyncio.timeout(5):
            while (await client.get(f"/api/runs/{live['id']}")).json()["status"] != "running":
                await asyncio.sleep(0.01)
        busy = await client.delete(f"/api/runs/{live['id']}")
        assert busy.status_code == 409
        assert "stop it first" in busy.json()["error"]["message"]
        assert live["id"] not in fake_backend.cleaned

        assert (await client.delete(f"/api/runs/{done['id']}")).status_code == 204
        assert fake_backend.cleaned == [done["id"]]
        assert (await client.get(f"/api/runs/{done['id']}")).status_code == 404
        assert (await client.get(f"/api/runs/{done['id']}/events")).status_code == 404
        again = await client.delete(f"/api/runs/{done['id']}")
        assert again.status_code == 404 and done["id"] in again.json()["error"]["message"]
        assert [r["id"] for r in (await client.get("/api/runs")).json()] == [live["id"]]

        await client.post(f"/api/runs/{live['id']}/stop")
        await wait_terminal(client, live["id"])
        assert (await client.delete(f"/api/runs/{live['id']}")).status_code == 204


async def test_failed_launch_leaves_nothing_behind(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    # Fails before: a launch that failed half-way kept its run directory forever.
    fake_backend.fail_launch = "the clone failed"
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        assert (await wait_terminal(client, run["id"]))["status"] == "failed"
        async with asyncio.timeout(5):
            while fake_backend.cleaned != [run["id"]]:
                await asyncio.sleep(0.01)


# --- the cockpit -------------------------------------------------------------------------------
async def test_delete_button_on_the_run_page(tmp_path: Path) -> None:
    # Fails before: no delete form, and POST /runs/{id}/delete was 405.
    backend = FakeBackend()
    async with cockpit(tmp_path, backend) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        run_id = (
            await cp.api.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})
        ).json()["id"]
        await wait_terminal(cp.api, run_id)
        page = (await browser.get(f"/runs/{run_id}")).text
        assert f'action="/runs/{run_id}/delete" id="delete-form">' in page
        assert 'data-confirm="Delete this run?' in page
        refused = await browser.post(f"/runs/{run_id}/delete", data={"csrf_token": "forged"})
        assert refused.status_code == 403
        token = await page_csrf(browser, f"/runs/{run_id}")
        deleted = await browser.post(f"/runs/{run_id}/delete", data={"csrf_token": token})
        assert deleted.status_code == 303 and deleted.headers["location"] == "/"
        assert (await cp.api.get(f"/api/runs/{run_id}")).status_code == 404
        assert backend.cleaned == [run_id]


async def test_delete_button_is_hidden_while_the_run_is_live(tmp_path: Path) -> None:
    backend = FakeBackend(script=slow_script)
    async with cockpit(tmp_path, backend) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        run_id = (
            await cp.api.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})
        ).json()["id"]
        page = (await browser.get(f"/runs/{run_id}")).text
        assert f'action="/runs/{run_id}/delete" id="delete-form" hidden>' in page
        token = await page_csrf(browser, f"/runs/{run_id}")
        kept = await browser.post(f"/runs/{run_id}/delete", data={"csrf_token": token})
        assert kept.status_code == 303 and kept.headers["location"] == f"/runs/{run_id}"
        assert (await cp.api.get(f"/api/runs/{run_id}")).status_code == 200


async def test_settings_page_shows_disk_use(tmp_path: Path) -> None:
    # Fails before: the settings page said nothing about disk use.
    async with cockpit(tmp_path, retention_hours=36) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        run_dir = tmp_path / "runs" / "0123456789ab"
        run_dir.mkdir(parents=True)
        (run_dir / "big").write_bytes(os.urandom(3 * 1024 * 1024))
        page = (await browser.get("/settings")).text
        assert 'id="disk-use"' in page
        assert "3.0 MiB of it for runs" in page
        assert "removed 36 h after it ended" in page


# --- disk use ----------------------------------------------------------------------------------
def test_measure_counts_each_inode_once_and_follows_no_link(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runs = data / "runs" / "r1"
    runs.mkdir(parents=True)
    (data / "db").write_bytes(b"x" * 100_000)
    (runs / "blob").write_bytes(b"y" * 200_000)
    os.link(runs / "blob", data / "runs" / "blob-again")
    outside = tmp_path / "outside"
    outside.write_bytes(b"z" * 5_000_000)
    (runs / "link").symlink_to(outside)
    use = retention.measure(data, data / "runs")
    files = {p: p.lstat().st_blocks * 512 for p in (data / "db", runs / "blob", runs / "link")}
    assert use.runs >= files[runs / "blob"] + files[runs / "link"]
    assert use.runs < 1_000_000  # the link's target and the second name are not counted
    assert use.used >= use.runs + files[data / "db"]
    assert use.used < 1_000_000 and use.free > 0 and use.entries == 5  # db, runs, r1, blob, link


def deep_tree(root: Path, depth: int = 1200) -> None:
    """``root/d/d/.../d/f``, deeper than Python's recursion limit (made without recursing)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    os.close(fd)


def test_measure_survives_a_deep_tree(tmp_path: Path) -> None:
    # An agent may nest directories deeper than Python's recursion limit.
    (tmp_path / "runs").mkdir()
    deep_tree(tmp_path / "runs")
    try:
        assert retention.measure(tmp_path, tmp_path / "runs").entries == 1202
    finally:
        subprocess.run(["rm", "-rf", "--", str(tmp_path / "runs")], check=True)


async def test_local_cleanup_removes_a_tree_deeper_than_pythons_stack(tmp_path: Path) -> None:
    # Fails before: shutil.rmtree raised RecursionError, so the run's files stayed for good.
    settings = make_settings(tmp_path / "data")
    backend = LocalBackend(settings)
    run = models.Run(spec=models.AgentSpec(repo="/srv/repo"))
    workspace = backend.run_dir(run.id) / "workspace"
    workspace.mkdir(parents=True)
    deep_tree(workspace)
    (workspace / "locked").mkdir()
    (workspace / "locked" / "f").write_text("x")
    (workspace / "locked").chmod(0)
    (workspace / "outside").symlink_to(tmp_path)  # not followed
    await backend.cleanup(run)
    assert not backend.run_dir(run.id).exists()
    assert (tmp_path / "data").is_dir()


async def test_disk_use_is_measured_off_the_loop_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []  # True: measured off the event loop's thread

    def fake_measure(data_dir: Path, runs_dir: Path) -> retention.DiskUse:
        try:
            asyncio.get_running_loop()
            calls.append(False)
        except RuntimeError:
            calls.append(True)
        return retention.DiskUse(len(calls), 0, 0, 0, 0.0)

    monkeypatch.setattr(retention, "measure", fake_measure)
    now = [100.0]
    cache = retention.DiskUseCache(tmp_path, tmp_path / "runs", ttl=60, clock=lambda: now[0])
    firsts = await asyncio.gather(cache.get(), cache.get(), cache.get())
    assert [u.used for u in firsts] == [1, 1, 1]
    now[0] += 59
    assert (await cache.get()).used == 1
    now[0] += 2
    assert (await cache.get()).used == 2
    assert calls == [True, True]
