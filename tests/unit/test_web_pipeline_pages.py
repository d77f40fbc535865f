"""Cockpit pages of the pipeline: the forge set-up form (secrets write-only, the webhook secret
once, the token test inline), the pipeline page (kill switch, attempts, retry), CSRF and
roles."""

from __future__ import annotations

from pathlib import Path

from agentfarm.backends.fake import FakeBackend
from agentfarm.domain import pipeline as domain
from agentfarm.store.pipeline import PipelineStore
from tests.fakes.forge import FakeForge
from tests.unit.forge_helpers import REPO, forge

from .test_api_forges import FORGE, TOKEN_VALUE, slow, stand_in
from .test_web_pages import wait_terminal
from .web_helpers import cockpit, csrf_of, login, page_csrf

__all__ = ["forge"]

FORM = {
    "name": "gh", "kind": "github", "base_url": "https://api.github.com",
    "token_secret": "GITHUB_TOKEN", "token": TOKEN_VALUE, "repos": "alice/proj\nalice/other\n",
    "label": "agentfarm", "config": "", "poll_seconds": "0", "mention": "@agentfarm",
    "stop_on_unlabel": "1", "closes_issue": "0", "draft": "1",
    "label_in_progress": "agentfarm:in-progress", "label_done": "agentfarm:done",
    "label_failed": "agentfarm:failed", "check_fix_attempts": "3",
    "check_fix_window_minutes": "60", "webhook_secret": "",
}  # fmt: skip


async def test_forge_form_sets_up_a_forge_and_shows_the_secret_once(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        token = await page_csrf(browser, "/forges/new")
        bad = {**FORM, "name": "Bad Name", "repos": "nope", "poll_seconds": "5"}
        answer = await browser.post("/forges/new", data={**bad, "csrf_token": token})
        assert answer.status_code == 422
        for field in ("name", "repos", "poll_seconds"):
            assert f'id="{field}-error"' in answer.text, field
        assert "owner/name" in answer.text and TOKEN_VALUE not in answer.text
        made = await browser.post("/forges/new", data={**FORM, "csrf_token": token})
        assert made.status_code == 200, made.text
        secret = made.text.split('id="webhook-secret" readonly value="')[1].split('"')[0]
        assert len(secret) >= 32
        assert "http://testserver/api/forges/gh/webhook" in made.text
        assert TOKEN_VALUE not in made.text
        saved = (await cp.api.get("/api/forges/gh")).json()
        assert saved["repos"] == ["alice/proj", "alice/other"]
        assert (saved["draft"], saved["closes_issue"], saved["stop_on_unlabel"]) == (
            True, False, True,
        )  # fmt: skip
        assert saved["config"] == "issue-implementer"
        # Never again: not on the forge's page nor the list.
        for path in ("/forges/gh", "/forges", "/pipeline"):
            page = await browser.get(path)
            assert page.status_code == 200, path
            assert secret not in page.text and TOKEN_VALUE not in page.text, path
        again = await browser.post("/forges/new", data={**FORM, "csrf_token": token})
        assert again.status_code == 422 and "already exists" in again.text


async def test_forge_edit_keeps_secrets_unless_given_and_rotates_on_request(
    tmp_path: Path,
) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        await cp.api.post("/api/forges", json=FORGE)
        page = await browser.get("/forges/gh")
        assert 'name="token" value=""' in page.text  # write-only
        token = csrf_of(page.text)
        form = {**FORM, "token": "", "label": "bot", "csrf_token": token}
        saved = await browser.post("/forges/gh", data=form)
        assert saved.status_code == 200 and "Saved." in saved.text
        assert 'id="webhook-secret"' not in saved.text
        assert (await cp.api.get("/api/forges/gh")).json()["label"] == "bot"
        secrets = cp.app.state.secrets
        assert secrets.get("GITHUB_TOKEN") == TOKEN_VALUE
        before = secrets.get("FORGE_WEBHOOK_GH")
        rotated = await browser.post("/forges/gh", data={**form, "new_webhook_secret": "1"})
        shown = rotated.text.split('id="webhook-secret" readonly value="')[1].split('"')[0]
        assert shown == secrets.get("FORGE_WEBHOOK_GH") != before
        bad = await browser.post("/forges/gh", data={**form, "mention": "nobody"})
        assert bad.status_code == 422 and 'id="mention-error"' in bad.text
        gone = await browser.post("/forges/gh/delete", data={"csrf_token": token})
        assert gone.status_code == 303
        assert (await cp.api.get("/api/forges")).json() == []


async def test_token_test_button_answers_inline(tmp_path: Path, forge: FakeForge) -> None:
    async with cockpit(tmp_path / "app") as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        body = {**FORGE, "kind": forge.kind, "base_url": forge.api_url, "repos": [REPO]}
        await cp.api.post("/api/forges", json={**body, "token": forge.token})
        token = await page_csrf(browser, "/forges/gh")
        inline = await browser.post(
            "/forges/gh/test", headers={"HX-Request": "true", "X-CSRF-Token": token}
        )
        assert inline.status_code == 200
        assert inline.text.startswith('<div id="token-test" class="alert alert-success"')
        assert f"token works: can read {REPO}" in inline.text
        cp.app.state.secrets.set("GITHUB_TOKEN", "wrong")
        plain = await browser.post("/forges/gh/test", data={"csrf_token": token})
        assert plain.status_code == 200 and "alert-error" in plain.text and "401" in plain.text


async def test_kill_switch_toggles_with_htmx_and_without(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        service = stand_in(cp)
        page = await browser.get("/pipeline")
        assert page.status_code == 200 and 'id="kill-switch"' in page.text
        assert "Pause all dispatching" in page.text and 'href="/pipeline"' in page.text
        token = csrf_of(page.text)
        fragment = await browser.post(
            "/pipeline/pause",
            data={"paused": "1"},
            headers={"HX-Request": "true", "X-CSRF-Token": token},
        )
        assert fragment.status_code == 200 and service.is_paused
        assert fragment.text.startswith('<section class="card row kill-switch is-paused"')
        assert "Resume dispatching" in fragment.text
        plain = await browser.post("/pipeline/pause", data={"paused": "0", "csrf_token": token})
        assert plain.status_code == 303 and not service.is_paused
        assert (await cp.api.get("/api/pipeline/pause")).json() == {"paused": False}


async def test_state_changes_need_the_csrf_token(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        await cp.api.post("/api/forges", json=FORGE)
        service = stand_in(cp)
        for path, data in (
            ("/pipeline/pause", {"paused": "1"}),
            ("/forges/new", {**FORM, "name": "other"}),
            ("/forges/gh", FORM),
            ("/forges/gh/delete", {}),
            ("/forges/gh/test", {}),
        ):
            refused = await browser.post(path, data={**data, "csrf_token": "forged"})
            assert refused.status_code == 403, path
        assert not service.is_paused
        assert [f["name"] for f in (await cp.api.get("/api/forges")).json()] == ["gh"]


async def test_forge_pages_are_for_admins(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user("ada")
        await cp.add_user("bob")
        await cp.api.post("/api/forges", json=FORGE)
        await login(browser, "bob")
        page = await browser.get("/pipeline")
        assert page.status_code == 200 and 'href="/forges"' not in page.text
        token = csrf_of(page.text)
        for path in ("/forges", "/forges/new", "/forges/gh"):
            refused = await browser.get(path)
            assert refused.status_code == 403 and "admin" in refused.text, path
        for path, data in (
            ("/forges/new", {**FORM, "name": "other"}),
            ("/forges/gh", FORM),
            ("/forges/gh/delete", {}),
            ("/forges/gh/test", {}),
        ):
            refused = await browser.post(path, data={**data, "csrf_token": token})
            assert refused.status_code == 403, path
            assert "admin" in refused.text
        assert [f["name"] for f in (await cp.api.get("/api/forges")).json()] == ["gh"]
        # Operating the pipeline is for everyone signed in.
        stand_in(cp)
        paused = await browser.post("/pipeline/pause", data={"paused": "1", "csrf_token": token})
        assert paused.status_code == 303


async def test_pipeline_page_lists_attempts_with_links_and_retries(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        forge_id = (await cp.api.post("/api/forges", json=FORGE)).json()["id"]
        ps = PipelineStore(cp.app.state.store.database)
        ended = await ps.create_attempt(
            domain.Attempt(
                forge_id=forge_id, repo="alice/proj", number=7, state="failed",
                title="<script>alert(1)</script> Add hello", reason="the run made no commits",
                branch="agentfarm/issue-7-add-hello", run_id="0123456789ab",
                pr_url="javascript:alert(1)", pr_number=9,
            )
        )  # fmt: skip
        running = await ps.create_attempt(
            domain.Attempt(
                forge_id=forge_id, repo="alice/proj", number=8, state="running",
                pr_url="https://github.com/alice/proj/pull/3", pr_number=3,
            )
        )  # fmt: skip
        await ps.track_issue(
            domain.TrackedIssue(forge_id=forge_id, repo="alice/proj", number=7, title="Hi")
        )
        service = stand_in(cp)
        page = await browser.get("/pipeline")
        text = page.text
        assert text.index(f'id="attempt-{running.id}"') < text.index(f'id="attempt-{ended.id}"')
        assert 'href="https://github.com/alice/proj/issues/7"' in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; Add hello" in text
        assert "<script>alert(1)" not in text and "javascript:" not in text
        assert 'href="/runs/0123456789ab"' in text and "agentfarm/issue-7-add-hello" in text
        assert 'href="https://github.com/alice/proj/pull/3"' in text
        assert "the run made no commits" in text and "Issues seen" in text
        assert 'hx-get="/pipeline/attempts"' in text
        assert f"/pipeline/attempts/{ended.id}/retry" in text
        assert f"/pipeline/attempts/{running.id}/stop" in text
        assert f"/pipeline/attempts/{running.id}/retry" not in text
        fragment = await browser.get("/pipeline/attempts")
        assert fragment.text.lstrip().startswith('<ul class="attempts"')
        assert f'id="attempt-{ended.id}"' in fragment.text and "<html" not in fragment.text
        token = csrf_of(text)
        assert f'value="{token}"' in fragment.text  # its retry and stop forms work too
        early = await browser.post(
            f"/pipeline/attempts/{running.id}/retry", data={"csrf_token": token}
        )
        assert early.status_code == 409 and "stop it first" in early.text
        retried = await browser.post(
            f"/pipeline/attempts/{ended.id}/retry", data={"csrf_token": token}
        )
        assert retried.status_code == 303 and service.asked == [("retry", ended.id)]
        stopped = await browser.post(
            f"/pipeline/attempts/{running.id}/stop", data={"csrf_token": token}
        )
        assert stopped.status_code == 303 and service.asked[-1] == ("stop", running.id)


async def test_pipeline_pages_need_a_sign_in(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        for path in ("/pipeline", "/forges", "/forges/new"):
            answer = await browser.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
        assert 'href="/pipeline"' not in (await browser.get("/login")).text
        del cp


async def test_removing_a_busy_forge_offers_to_stop_its_runs(tmp_path: Path) -> None:
    async with cockpit(tmp_path, FakeBackend(script=slow)) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        forge_id = (await cp.api.post("/api/forges", json=FORGE)).json()["id"]
        await cp.api.post("/api/configs", json={"name": "demo", "repo": "/r", "prompt": "go"})
        run_id = (await cp.api.post("/api/runs", json={"config": "demo"})).json()["id"]
        ps = PipelineStore(cp.app.state.store.database)
        await ps.create_attempt(
            domain.Attempt(forge_id=forge_id, repo=REPO, number=1, state="running", run_id=run_id)
        )
        token = await page_csrf(browser, "/forges/gh")
        refused = await browser.post("/forges/gh/delete", data={"csrf_token": token})
        assert refused.status_code == 409 and "1 active attempt" in refused.text
        assert 'name="force" value="1"' in refused.text
        forced = await browser.post("/forges/gh/delete", data={"csrf_token": token, "force": "1"})
        assert forced.status_code == 303
        assert (await wait_terminal(cp.api, run_id))["status"] == "stopped"
        assert (await cp.api.get("/api/forges")).json() == []
