"""`POST /api/orchestration/dispatch`: a run per idempotency key; a repeat (also concurrent, or
after a restart) answers the same run without launching again; another body is a 409."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from agentfarm.domain.pipeline import Dispatch
from agentfarm.store.pipeline import PipelineStore
from agentfarm.web import orchestration

from .conftest import AppFactory
from .test_api import wait_terminal
from .test_web_roles import bearer
from .web_helpers import cockpit

CONFIG = {"name": "demo", "repo": "/srv/repo", "prompt": "fix the bug"}
URL = "/api/orchestration/dispatch"


async def run_ids(client: httpx.AsyncClient) -> list[str]:
    return [r["id"] for r in (await client.get("/api/runs")).json()]


async def test_a_repeat_returns_the_same_run_without_launching_again(
    app_client: AppFactory,
) -> None:
    async with app_client() as client:
        assert (await client.post("/api/configs", json=CONFIG)).status_code == 201
        body: dict[str, Any] = {"idempotency_key": "issue-42/attempt-1", "config": "demo"}
        first = await client.post(URL, json=body)
        assert first.status_code == 201, first.text
        made = first.json()
        assert made["idempotency_key"] == "issue-42/attempt-1"
        assert made["run"]["id"] == made["run_id"] and made["run"]["config_name"] == "demo"
        # The same request, spelled differently (a default given explicitly), is the same.
        again = await client.post(URL, json={**body, "prompt": None, "spec": None})
        assert again.status_code == 200, again.text
        assert again.json()["run_id"] == made["run_id"]
        assert again.json()["dispatched_at"] == made["dispatched_at"]
        assert await run_ids(client) == [made["run_id"]]
        looked_up = await client.get(f"{URL}/issue-42/attempt-1")
        assert looked_up.status_code == 200 and looked_up.json()["run_id"] == made["run_id"]
        missing = await client.get(f"{URL}/never-used")
        assert missing.status_code == 404 and "never-used" in missing.json()["error"]["message"]


async def test_the_same_key_with_another_body_is_a_conflict(app_client: AppFactory) -> None:
    async with app_client() as client:
        await client.post("/api/configs", json=CONFIG)
        first = await client.post(URL, json={"idempotency_key": "k", "config": "demo"})
        assert first.status_code == 201
        other = await client.post(
            URL, json={"idempotency_key": "k", "config": "demo", "prompt": "something else"}
        )
        assert other.status_code == 409
        message = other.json()["error"]["message"]
        assert "was used for another request" in message and first.json()["run_id"] in message
        assert len(await run_ids(client)) == 1


async def test_concurrent_repeats_launch_once(app_client: AppFactory) -> None:
    async with app_client() as client:
        await client.post("/api/configs", json=CONFIG)
        body = {"idempotency_key": "burst", "config": "demo"}
        answers = await asyncio.gather(*(client.post(URL, json=body) for _ in range(8)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] * 7 + [201], [a.text for a in answers]
        assert len({a.json()["run_id"] for a in answers}) == 1
        assert len(await run_ids(client)) == 1


async def test_a_repeat_after_a_restart_returns_the_same_run(app_client: AppFactory) -> None:
    body = {"idempotency_key": "survives", "config": "demo"}
    async with app_client() as client:
        await client.post("/api/configs", json=CONFIG)
        first = await client.post(URL, json=body)
        assert first.status_code == 201
        await wait_terminal(client, first.json()["run_id"])
    async with app_client() as client:
        again = await client.post(URL, json=body)
        assert again.status_code == 200 and again.json()["run_id"] == first.json()["run_id"]
        assert again.json()["run"]["status"] == "succeeded"  # as it is now, not as it was
        assert len(await run_ids(client)) == 1


async def test_a_failed_launch_frees_the_key_and_a_deleted_run_is_said(
    app_client: AppFactory,
) -> None:
    async with app_client() as client:
        body = {"idempotency_key": "early", "config": "demo"}
        unknown = await client.post(URL, json=body)
        assert unknown.status_code == 422 and "no config named" in unknown.text
        assert (await client.get(f"{URL}/early")).status_code == 404
        await client.post("/api/configs", json=CONFIG)
        made = await client.post(URL, json=body)  # fixed: the same request now works
        assert made.status_code == 201
        run_id = made.json()["run_id"]
        await wait_terminal(client, run_id)
        assert (await client.delete(f"/api/runs/{run_id}")).status_code == 204
        gone = await client.post(URL, json=body)
        assert gone.status_code == 409 and "it was deleted" in gone.text
        assert await run_ids(client) == []


async def test_keys_are_validated_and_belong_to_their_caller(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        await cp.add_user("ada")
        await cp.api.post("/api/configs", json=CONFIG)
        for bad in ("", "   ", "a\nb", "x" * 201):
            refused = await cp.api.post(URL, json={"idempotency_key": bad, "config": "demo"})
            assert refused.status_code == 422, bad
            assert "idempotency_key" in refused.json()["error"]["message"]
        extra = await cp.api.post(URL, json={"idempotency_key": "k", "config": "demo", "x": 1})
        assert extra.status_code == 422
        body = {"idempotency_key": "shared-name", "config": "demo"}
        mine = await cp.api.post(URL, json=body)
        made = await cp.api.post("/api/tokens", json={"name": "d", "user": "ada"})
        async with bearer(cp, made.json()["token"]) as ada:
            theirs = await ada.post(URL, json=body)
            assert theirs.status_code == 201  # ada's key, not the server token's
            assert theirs.json()["run_id"] != mine.json()["run_id"]
            assert (await ada.get(f"{URL}/shared-name")).json()["run_id"] == theirs.json()["run_id"]
        reader = await cp.api.post(
            "/api/tokens", json={"name": "r", "user": "ada", "scopes": ["read"]}
        )
        async with bearer(cp, reader.json()["token"]) as ro:
            refused = await ro.post(URL, json={**body, "idempotency_key": "ro"})
            assert refused.status_code == 403 and "`operate`" in refused.text
            assert (await ro.get(f"{URL}/shared-name")).status_code == 200
        schema = (await cp.api.get("/openapi.json")).json()
        post = schema["paths"][URL]["post"]
        assert {"200", "201", "409"} <= set(post["responses"])
        assert "idempotency_key" in str(schema["components"]["schemas"]["DispatchRequest"])


async def test_a_key_recorded_before_a_crash_never_launches_twice(tmp_path: Path) -> None:
    # The server stopped after recording the dispatch and before creating its run.
    async with cockpit(tmp_path) as cp:
        await cp.api.post("/api/configs", json=CONFIG)
        body = {"idempotency_key": "crashed", "config": "demo"}
        request = orchestration.DispatchRequest.model_validate(body)
        recorded = Dispatch(
            key="crashed", caller="token", digest=orchestration.digest_of(request),
            run_id="0123456789ab",
        )  # fmt: skip
        await PipelineStore(cp.app.state.store.database).create_dispatch(recorded)
        again = await cp.api.post(URL, json=body)
        assert again.status_code == 409 and "stopped while launching" in again.text
        assert "0123456789ab" in again.text and "a new key" in again.text
        assert await run_ids(cp.api) == []
