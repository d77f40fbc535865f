"""Follow-ups and interrupts from the API and from the run page's reply box (fake backend)."""

from __future__ import annotations

from pathlib import Path

from agentfarm.backends.fake import FakeBackend, Step, claude_like_script
from agentfarm.domain import models
from agentfarm.web import event_html

from .test_api import wait_running, wait_terminal
from .test_web_pages import FORM
from .web_helpers import cockpit, login, page_csrf


def slow(run: models.Run, command: object) -> list[Step]:
    steps = claude_like_script(run, command)  # type: ignore[arg-type]
    return [*steps[:2], Step("stdout", steps[2].data, delay=600), *steps[3:]]


async def test_api_messages_and_interrupt_with_their_409s(tmp_path: Path) -> None:
    backend = FakeBackend(script=slow)
    async with cockpit(tmp_path, backend) as cp:
        api = cp.api
        await api.post("/api/configs", json={"name": "demo", "repo": "/r", "prompt": "go"})
        run_id = (await api.post("/api/runs", json={"config": "demo"})).json()["id"]
        await wait_running(api, run_id)
        sent = await api.post(f"/api/runs/{run_id}/messages", json={"text": "and the docs"})
        assert sent.status_code == 202 and sent.json() == {"status": "sent"}
        interrupted = await api.post(f"/api/runs/{run_id}/interrupt")
        assert interrupted.status_code == 202, interrupted.text
        assert backend.runs[run_id].interrupts == 1
        empty = await api.post(f"/api/runs/{run_id}/messages", json={"text": ""})
        assert empty.status_code == 422
        await api.post(f"/api/runs/{run_id}/stop")
        await wait_terminal(api, run_id)
        late = await api.post(f"/api/runs/{run_id}/interrupt")
        assert late.status_code == 409
        error = late.json()["error"]
        assert error["code"] == "conflict" and "has ended (stopped)" in error["message"]
        assert (await api.post("/api/runs/nope0000nope/interrupt")).status_code in (404, 422)
        spec = (await api.get("/openapi.json")).json()["paths"]
        assert "409" in spec["/api/runs/{run_id}/interrupt"]["post"]["responses"]


async def test_the_reply_box_sends_and_interrupts_and_says_why_not(tmp_path: Path) -> None:
    backend = FakeBackend(script=slow)
    async with cockpit(tmp_path, backend) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        await cp.api.post("/api/configs", json={"name": "demo", "repo": "/r", "prompt": "go"})
        run_id = (await cp.api.post("/api/runs", json={"config": "demo"})).json()["id"]
        await wait_running(cp.api, run_id)
        page = await browser.get(f"/runs/{run_id}")
        assert 'id="talk-form"' in page.text and "Interrupt turn" in page.text
        token = await page_csrf(browser, f"/runs/{run_id}")
        hx = {"HX-Request": "true", "X-CSRF-Token": token}
        sent = await browser.post(f"/runs/{run_id}/message", data={"text": "hi"}, headers=hx)
        assert sent.status_code == 200 and ">sent<" in sent.text
        assert backend.runs[run_id].stdin  # reached the agent
        blank = await browser.post(f"/runs/{run_id}/message", data={"text": " "}, headers=hx)
        assert "alert-error" in blank.text and "write a message first" in blank.text
        done = await browser.post(f"/runs/{run_id}/interrupt", headers=hx)
        assert "interrupted" in done.text and backend.runs[run_id].interrupts == 1
        plain = await browser.post(
            f"/runs/{run_id}/message", data={"text": "x", "csrf_token": token}
        )
        assert plain.status_code == 303  # without htmx: back to the run page
        forged = await browser.post(f"/runs/{run_id}/message", data={"text": "x"})
        assert forged.status_code == 403
        await cp.api.post(f"/api/runs/{run_id}/stop")
        await wait_terminal(cp.api, run_id)
        ended = await browser.post(f"/runs/{run_id}/message", data={"text": "x"}, headers=hx)
        assert "alert-error" in ended.text and "has ended" in ended.text
        assert 'id="talk-form"' not in (await browser.get(f"/runs/{run_id}")).text


def test_waiting_and_interrupt_events_read_well() -> None:
    when = models.utcnow()
    run_id = models.new_id()  # the HTML cache is keyed by (run, seq): not another test's "r"
    waiting = models.Event(
        run_id=run_id, seq=1, type=models.EventType.run_waiting, data={"seconds": 90}, ts=when
    )
    html = event_html.event_html(waiting)
    assert "waiting for a follow-up (ends in 90 s" in html
    interrupt = models.Event(run_id=run_id, seq=2, type=models.EventType.user_interrupt, ts=when)
    assert "you interrupted the turn" in event_html.event_html(interrupt)


async def test_the_config_form_sets_the_follow_up_window(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        token = await page_csrf(browser, "/configs/new")
        form = {**FORM, "followup_window_seconds": "120", "csrf_token": token}
        assert (await browser.post("/configs/new", data=form)).status_code == 303
        saved = (await cp.api.get("/api/configs/demo")).json()
        assert saved["followup_window_seconds"] == 120
        edit = await browser.get(f"/configs/{saved['id']}/edit")
        assert 'name="followup_window_seconds" inputmode="numeric" value="120"' in edit.text
        bad = {**form, "name": "demo2", "followup_window_seconds": "-1"}
        response = await browser.post("/configs/new", data=bad)
        assert response.status_code == 422


async def test_an_ended_run_is_continued_from_its_page(tmp_path: Path) -> None:
    backend = FakeBackend()  # a short conversation that succeeds
    async with cockpit(tmp_path, backend) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        await cp.api.post("/api/configs", json={"name": "demo", "repo": "/r", "prompt": "go"})
        run_id = (await cp.api.post("/api/runs", json={"config": "demo"})).json()["id"]
        assert (await wait_terminal(cp.api, run_id))["status"] == "succeeded"
        page = await browser.get(f"/runs/{run_id}")
        assert 'id="continue-form"' in page.text and 'id="talk-form"' not in page.text
        token = await page_csrf(browser, f"/runs/{run_id}")
        hx = {"HX-Request": "true", "X-CSRF-Token": token}
        blank = await browser.post(f"/runs/{run_id}/continue", data={"text": ""}, headers=hx)
        assert "write what the agent should do next" in blank.text
        went = await browser.post(f"/runs/{run_id}/continue", data={"text": "more"}, headers=hx)
        assert went.status_code == 204 and went.headers["hx-redirect"] == f"/runs/{run_id}"
        assert (await wait_terminal(cp.api, run_id))["status"] == "succeeded"
        assert backend.world.resumes == [run_id]
        events = (await cp.api.get(f"/api/runs/{run_id}/events")).json()
        assert [e["data"]["text"] for e in events if e["type"] == "user.message"] == ["more"]
        api_bare = await cp.api.post(f"/api/runs/{run_id}/resume")
        assert api_bare.status_code == 409 and "with a new prompt" in api_bare.text
        api_go = await cp.api.post(f"/api/runs/{run_id}/resume", json={"prompt": "and more"})
        assert api_go.status_code == 202 and api_go.json()["status"] == "starting"
        await wait_terminal(cp.api, run_id)
