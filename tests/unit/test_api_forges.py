"""Forges and the pipeline over the API: set-up, validation, secrets never shown again, roles,
the kill switch, retry and stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import ANY

from agentfarm.backends.fake import FakeBackend, Step, claude_like_script
from agentfarm.domain import models
from agentfarm.domain import pipeline as domain
from agentfarm.store.pipeline import PipelineStore
from tests.fakes.forge import FakeForge
from tests.unit.forge_helpers import REPO, forge

from .test_web_pages import wait_terminal
from .test_web_roles import bearer, new_token
from .test_web_scopes import api_token, refused
from .web_helpers import Cockpit, cockpit, login

__all__ = ["forge"]

TOKEN_VALUE = "ghp_very-secret-token-value"
FORGE: dict[str, Any] = {
    "name": "gh",
    "kind": "github",
    "base_url": "https://api.github.com",
    "token_secret": "GITHUB_TOKEN",
    "repos": ["alice/proj"],
    "token": TOKEN_VALUE,
}
#: The same forge as an update: its settings, without its name (the path names it).
SETTINGS = {k: v for k, v in FORGE.items() if k != "name"}


class StandIn:
    """The pipeline service's surface the API uses, recording what it was asked."""

    def __init__(self, pipeline: PipelineStore) -> None:
        self.pipeline = pipeline
        self.is_paused = False
        self.asked: list[tuple[str, str]] = []

    async def paused(self) -> bool:
        return self.is_paused

    async def set_paused(self, paused: bool) -> None:
        self.is_paused = paused

    async def retry(self, attempt_id: str) -> domain.Attempt:
        self.asked.append(("retry", attempt_id))
        old = await self.pipeline.get_attempt(attempt_id)
        return await self.pipeline.create_attempt(
            domain.Attempt(forge_id=old.forge_id, repo=old.repo, number=old.number, seq=2)
        )

    async def stop_attempt(self, attempt_id: str) -> domain.Attempt:
        self.asked.append(("stop", attempt_id))
        old = await self.pipeline.get_attempt(attempt_id)
        return await self.pipeline.save_attempt(
            old.model_copy(update={"state": domain.AttemptState.stopped})
        )


def slow(run: models.Run, command: object) -> list[Step]:
    """A fake agent that waits (until stopped) after starting."""
    steps = claude_like_script(run, command)  # type: ignore[arg-type]
    return [*steps[:2], Step("stdout", steps[2].data, delay=30), *steps[3:]]


def stand_in(cp: Cockpit) -> StandIn:
    service = StandIn(PipelineStore(cp.app.state.store.database))
    cp.app.state.pipeline = service
    return service


async def test_forge_crud_and_the_secret_shown_once(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        created = await cp.api.post("/api/forges", json=FORGE)
        assert created.status_code == 201, created.text
        body = created.json()
        secret = body["webhook_secret"]
        assert len(secret) >= 32
        assert body["webhook_url"] == "http://testserver/api/forges/gh/webhook"
        assert body["config"] == "issue-implementer"
        assert TOKEN_VALUE not in created.text
        for path in ("/api/forges", "/api/forges/gh", "/api/pipeline", "/api/secrets"):
            shown = await cp.api.get(path)
            assert shown.status_code == 200, path
            assert secret not in shown.text and TOKEN_VALUE not in shown.text, path
        assert [f["name"] for f in (await cp.api.get("/api/forges")).json()] == ["gh"]
        changed = await cp.api.put(
            "/api/forges/gh", json={**SETTINGS, "label": "bot", "new_webhook_secret": True}
        )
        assert changed.status_code == 200, changed.text
        rotated = changed.json()["webhook_secret"]
        assert rotated and rotated != secret and changed.json()["label"] == "bot"
        kept = await cp.api.put("/api/forges/gh", json={**SETTINGS, "token": None})
        assert kept.status_code == 200 and kept.json()["webhook_secret"] is None
        assert (await cp.api.delete("/api/forges/gh")).status_code == 204
        gone = await cp.api.get("/api/forges/gh")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
        names = (await cp.api.get("/api/secrets")).json()["names"]
        assert names == ["GITHUB_TOKEN"]


async def test_the_public_url_makes_the_webhook_url(tmp_path: Path) -> None:
    async with cockpit(tmp_path, public_url="https://farm.example.org/") as cp:
        created = await cp.api.post("/api/forges", json=FORGE)
        assert created.json()["webhook_url"] == "https://farm.example.org/api/forges/gh/webhook"


async def test_validation_answers_in_the_one_error_shape(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({**FORGE, "kind": "gitlab"}, 422, "kind"),
            ({**FORGE, "repos": ["not a repo"]}, 422, "repos"),
            ({**FORGE, "repos": []}, 422, "repos"),
            ({**FORGE, "base_url": "https://u:p@api.github.com"}, 422, "credentials"),
            ({**FORGE, "poll_seconds": 3}, 422, "at least 10"),
            ({**FORGE, "name": "Bad Name"}, 422, "name"),
            ({**FORGE, "surprise": 1}, 422, "surprise"),
            ({**FORGE, "config": "missing"}, 422, "agentfarm config add"),
            ({**FORGE, "token": None}, 422, "agentfarm secret set GITHUB_TOKEN"),
            ({**FORGE, "token": "two words"}, 422, "whitespace"),
        ]
        for body, code, words in cases:
            answer = await cp.api.post("/api/forges", json=body)
            assert answer.status_code == code, (body, answer.text)
            error = answer.json()["error"]
            assert set(error) >= {"code", "message"} and words in error["message"], error
        assert (await cp.api.get("/api/forges")).json() == []
        await cp.api.post("/api/forges", json=FORGE)
        dup = await cp.api.post("/api/forges", json=FORGE)
        assert dup.status_code == 409 and "already exists" in dup.json()["error"]["message"]
        both = await cp.api.put(
            "/api/forges/gh",
            json={**SETTINGS, "webhook_secret": "x" * 20, "new_webhook_secret": True},
        )
        assert both.status_code == 422
        odd = await cp.api.get("/api/forges/..%2F..")
        assert odd.status_code == 404
        assert (await cp.api.post("/api/pipeline/attempts/nope/retry")).status_code == 404


async def test_forges_are_for_admins_and_operating_is_for_everyone(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user("ada")
        await cp.add_user("bob")
        await cp.api.post("/api/forges", json=FORGE)
        await login(browser, "bob")
        async with bearer(cp, await new_token(browser, "bobs")) as bob:
            for method, path, body in (
                ("POST", "/api/forges", {**FORGE, "name": "other"}),
                ("GET", "/api/forges", None),
                ("GET", "/api/forges/gh", None),
                ("PUT", "/api/forges/gh", SETTINGS),
                ("DELETE", "/api/forges/gh", None),
                ("POST", "/api/forges/gh/test", None),
            ):
                refused = await bob.request(method, path, json=body)
                assert refused.status_code == 403, (method, path)
                assert "admin" in refused.json()["error"]["message"]
            # The pipeline's view names forges without their settings.
            view = await bob.get("/api/pipeline")
            assert view.status_code == 200
            assert view.json()["forges"] == [
                {"id": ANY, "name": "gh", "kind": "github", "web_url": "https://github.com"}
            ]
            assert "GITHUB_TOKEN" not in view.text and "FORGE_WEBHOOK" not in view.text
            paused = await bob.put("/api/pipeline/pause", json={"paused": True})
            assert paused.status_code == 200 and paused.json() == {"paused": True}
        assert (await cp.api.get("/api/forges/gh")).status_code == 200


async def test_scopes_decide_reading_operating_and_setting_up(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        await cp.add_user("ada")  # the first user: an admin
        await cp.api.post("/api/forges", json=FORGE)
        stand_in(cp)
        async with bearer(cp, await api_token(cp, "ada", "read")) as reader:
            assert (await reader.get("/api/pipeline")).status_code == 200
            assert (await reader.get("/api/pipeline/pause")).status_code == 200
            assert refused(
                await reader.put("/api/pipeline/pause", json={"paused": True}), "operate"
            )
            assert refused(await reader.get("/api/forges"), "admin")
        async with bearer(cp, await api_token(cp, "ada", "operate")) as operator:
            paused = await operator.put("/api/pipeline/pause", json={"paused": True})
            assert paused.status_code == 200
            assert refused(await operator.get("/api/forges/gh"), "admin")
            assert refused(await operator.post("/api/forges/gh/test"), "admin")
        async with bearer(cp, await api_token(cp, "ada", "admin")) as admin:
            assert (await admin.get("/api/forges/gh")).status_code == 200


async def test_pause_through_the_service_or_the_flag(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        if hasattr(cp.app.state, "pipeline"):
            del cp.app.state.pipeline
        assert (await cp.api.get("/api/pipeline/pause")).json() == {"paused": False}
        assert (await cp.api.put("/api/pipeline/pause", json={"paused": True})).json() == {
            "paused": True
        }
        assert (await cp.api.get("/api/pipeline")).json()["paused"] is True
        service = stand_in(cp)
        assert (await cp.api.put("/api/pipeline/pause", json={"paused": True})).status_code == 200
        assert service.is_paused
        await cp.api.put("/api/pipeline/pause", json={"paused": False})
        assert not service.is_paused
        bad = await cp.api.put("/api/pipeline/pause", json={"paused": "maybe"})
        assert bad.status_code == 422


async def test_pipeline_lists_attempts_newest_first_and_filters(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        forge_id = (await cp.api.post("/api/forges", json=FORGE)).json()["id"]
        await cp.api.post("/api/forges", json={**FORGE, "name": "fj", "kind": "forgejo"})
        ps = PipelineStore(cp.app.state.store.database)
        first = await ps.create_attempt(
            domain.Attempt(forge_id=forge_id, repo="alice/proj", number=1, state="failed")
        )
        second = await ps.create_attempt(
            domain.Attempt(forge_id=forge_id, repo="alice/proj", number=2, state="running")
        )
        view = (await cp.api.get("/api/pipeline")).json()
        assert [a["id"] for a in view["attempts"]] == [second.id, first.id]
        assert {f["name"] for f in view["forges"]} == {"gh", "fj"}
        failed = (await cp.api.get("/api/pipeline", params={"state": "failed"})).json()
        assert [a["id"] for a in failed["attempts"]] == [first.id]
        other = (await cp.api.get("/api/pipeline", params={"forge": "fj"})).json()
        assert other["attempts"] == []
        unknown = await cp.api.get("/api/pipeline", params={"forge": "nope"})
        assert unknown.status_code == 404
        bad_state = await cp.api.get("/api/pipeline", params={"state": "sleeping"})
        assert bad_state.status_code == 422


async def test_retry_and_stop_go_through_the_service(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        forge_id = (await cp.api.post("/api/forges", json=FORGE)).json()["id"]
        ps = PipelineStore(cp.app.state.store.database)
        running = await ps.create_attempt(
            domain.Attempt(forge_id=forge_id, repo="alice/proj", number=1, state="running")
        )
        service = stand_in(cp)
        early = await cp.api.post(f"/api/pipeline/attempts/{running.id}/retry")
        assert early.status_code == 409 and "stop it first" in early.json()["error"]["message"]
        stopped = await cp.api.post(f"/api/pipeline/attempts/{running.id}/stop")
        assert stopped.status_code == 202 and stopped.json()["state"] == "stopped"
        retried = await cp.api.post(f"/api/pipeline/attempts/{running.id}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["seq"] == 2 and retried.json()["id"] != running.id
        assert service.asked == [("stop", running.id), ("retry", running.id)]
        missing = await cp.api.post("/api/pipeline/attempts/0123456789ab/stop")
        assert missing.status_code == 404


async def test_force_removal_stops_the_runs_of_active_attempts(tmp_path: Path) -> None:
    async with cockpit(tmp_path, FakeBackend(script=slow)) as cp:
        forge_id = (await cp.api.post("/api/forges", json=FORGE)).json()["id"]
        await cp.api.post("/api/configs", json={"name": "demo", "repo": "/r", "prompt": "go"})
        run_id = (await cp.api.post("/api/runs", json={"config": "demo"})).json()["id"]
        ps = PipelineStore(cp.app.state.store.database)
        await ps.create_attempt(
            domain.Attempt(
                forge_id=forge_id, repo="alice/proj", number=1, state="running", run_id=run_id
            )
        )
        refused = await cp.api.delete("/api/forges/gh")
        assert refused.status_code == 409 and "force" in refused.json()["error"]["message"]
        assert (await cp.api.delete("/api/forges/gh?force=true")).status_code == 204
        assert (await wait_terminal(cp.api, run_id))["status"] == "stopped"
        assert await ps.list_attempts(forge_id=forge_id) == []


async def test_token_test_over_the_api(tmp_path: Path, forge: FakeForge) -> None:
    async with cockpit(tmp_path / "app") as cp:
        body = {**SETTINGS, "kind": forge.kind, "base_url": forge.api_url, "repos": [REPO]}
        await cp.api.post("/api/forges", json={**body, "name": "gh", "token": forge.token})
        works = (await cp.api.post("/api/forges/gh/test")).json()
        assert works["ok"] is True and REPO in works["message"]
        await cp.api.put("/api/forges/gh", json={**body, "token": "wrong-token"})
        fails = (await cp.api.post("/api/forges/gh/test")).json()
        assert fails["ok"] is False and "401" in fails["message"]


async def test_openapi_documents_the_forge_and_pipeline_paths(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        schema = (await cp.api.get("/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/api/forges",
        "/api/forges/{name}",
        "/api/forges/{name}/test",
        "/api/pipeline",
        "/api/pipeline/pause",
        "/api/pipeline/attempts/{attempt_id}/retry",
        "/api/pipeline/attempts/{attempt_id}/stop",
    ):
        assert path in paths, path
    created = paths["/api/forges"]["post"]["responses"]["201"]["content"]["application/json"]
    assert created["schema"]["$ref"].endswith("/ForgeCreated")
