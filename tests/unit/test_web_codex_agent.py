"""Codex in the cockpit and the CLI's output: the config form offers it, and a Codex run's cost
reads as an estimate on the run page, in the run list and in the result card."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.cli import event_text
from agentfarm.domain import launch, models

from .test_web_pages import FORM
from .web_helpers import cockpit, login, page_csrf

RECORDED = Path(__file__).resolve().parents[1] / "data" / "codex" / "write-and-commit.jsonl"


def replay(_run: models.Run, _command: launch.AgentCommand) -> list[Step]:
    steps = [Step("stdout", line) for line in RECORDED.read_bytes().splitlines()]
    return [*steps, Step("exit", exit=ExitInfo(exit_code=0))]


async def test_the_config_form_offers_codex(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        form = await browser.get("/configs/new")
        assert '<option value="codex">codex (OpenAI Codex CLI)</option>' in form.text
        token = await page_csrf(browser, "/configs/new")
        data = {**FORM, "agent": "codex", "model": "gpt-5-codex", "csrf_token": token}
        ok = await browser.post("/configs/new", data=data)
        assert ok.status_code == 303, ok.text
        saved = (await cp.api.get("/api/configs/demo")).json()
        assert (saved["agent"], saved["model"]) == ("codex", "gpt-5-codex")


async def test_a_codex_run_shows_its_cost_as_an_estimate(tmp_path: Path) -> None:
    backend = FakeBackend(replay)
    async with (
        cockpit(tmp_path, backend, codex_api_key="sk-codex-web-0123") as cp,
        cp.browser() as browser,
    ):
        await cp.add_user()
        await login(browser)
        spec = {"repo": "/r", "prompt": "p", "agent": "codex", "model": "gpt-5-codex"}
        run_id = (await cp.api.post("/api/runs", json={"spec": spec})).json()["id"]
        async with asyncio.timeout(20):
            while (run := (await cp.api.get(f"/api/runs/{run_id}")).json())["status"] != (
                "succeeded"
            ):
                await asyncio.sleep(0.01)
        assert run["cost_estimated"] is True and run["cost_usd"] > 0
        shown = f"≈ ${run['cost_usd']:.4f} (estimate)"
        page = await browser.get(f"/runs/{run_id}")
        head = page.text.split('id="run-head"')[1].split("</dl>")[0]
        assert shown in head and "codex" in head
        assert "(estimate)" in page.text.split('class="card result-card')[1]
        listing = await browser.get("/")
        assert shown in listing.text.split(f'data-run="{run_id}"')[1].split("</li>")[0]
        result = next(
            e
            for e in (await cp.api.get(f"/api/runs/{run_id}/events")).json()
            if e["type"] == "agent.result"
        )
        line = event_text.event_line(result)
        assert line is not None and "(estimate)" in line.plain
