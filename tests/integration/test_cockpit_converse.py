"""The run page's reply box in a real browser (phone viewport), against a real server running
the real Claude Code CLI on the scripted fake model: the follow-up window counts down, a reply
starts a new turn in the same session, an interrupt while the agent waits says why not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api as fake
from tests.integration.server import Server
from tests.integration.test_cockpit import chromium as chromium  # the fixtures
from tests.integration.test_cockpit import launch, phone, server, shot, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.browser]
__all__ = ["chromium", "phone", "server"]


def test_reply_to_an_agent_waiting_for_a_follow_up(
    phone: Any, server: Server, source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    page = phone
    marker = fake_anthropic.register(
        "cockpit-reply", [fake.text("First answer."), fake.text("Second answer.")]
    )
    with server.client() as c:
        response = c.post(
            "/api/configs",
            json={"name": "talker", "repo": str(source), "prompt": f"{marker} hello",
                  "env": {"CLAUDE_CODE_MAX_RETRIES": "0"}, "followup_window_seconds": 600},
        )  # fmt: skip
        assert response.status_code == 201, response.text
    sign_in(page)
    run_id = launch(server, "talker")
    page.goto(f"/runs/{run_id}")
    waiting = page.locator("#waiting-state")
    waiting.wait_for(state="visible", timeout=90_000)
    assert "waiting for a follow-up (ends in" in waiting.inner_text()
    assert page.locator(".ev-run-waiting").count() == 1
    shot(page, "run-waiting")
    page.locator("#talk-text").fill("A second question, please.")
    page.get_by_role("button", name="Send").click()
    page.locator(".ev-user-message", has_text="A second question, please.").wait_for()
    page.locator(".ev-run-waiting").nth(1).wait_for(timeout=90_000)  # answered, waiting again
    assert page.locator("#talk-text").input_value() == ""
    assert "Second answer." in page.locator("#events").inner_text()
    page.get_by_role("button", name="Interrupt turn").click()
    status = page.locator("#talk-status.alert-error")
    status.wait_for()
    assert "no turn is running" in status.inner_text()
    shot(page, "run-reply")
    with server.client() as c:
        run = c.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "running"
        c.post(f"/api/runs/{run_id}/stop")
    page.locator("#run-status .badge").filter(has_text="stopped").wait_for(timeout=60_000)
    page.locator("#talk-form").wait_for(state="detached")
    waiting.wait_for(state="hidden")


def test_continue_an_ended_run_from_its_page(
    phone: Any, server: Server, source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    page = phone
    marker = fake_anthropic.register(
        "cockpit-continue", [fake.text("First answer."), fake.text("Second answer.")]
    )
    with server.client() as c:
        response = c.post(
            "/api/configs",
            json={"name": "again", "repo": str(source), "prompt": f"{marker} hello",
                  "env": {"CLAUDE_CODE_MAX_RETRIES": "0"}},
        )  # fmt: skip
        assert response.status_code == 201, response.text
    sign_in(page)
    run_id = launch(server, "again")
    server.wait_status(run_id, {"succeeded"}, timeout=90)
    page.goto(f"/runs/{run_id}")
    page.locator("#continue-text").fill("One more thing, please.")
    page.get_by_role("button", name="Continue").click()
    page.locator(".ev-user-message", has_text="One more thing, please.").wait_for()
    page.locator(".result-card", has_text="Second answer.").wait_for(timeout=90_000)
    page.locator("#run-status .badge-success").wait_for(timeout=60_000)
    shot(page, "run-continued")
    with server.client() as c:
        assert c.get(f"/api/runs/{run_id}").json()["status"] == "succeeded"
