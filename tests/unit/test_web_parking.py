"""The cockpit and the API with a parked run: the badge says until when, the run page has a
Resume button that works, warnings show on the run and the dashboard."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand

from .web_helpers import cockpit, login, page_csrf


def line(obj: dict[str, Any]) -> Step:
    return Step("stdout", json.dumps({**obj, "session_id": "sess-web"}).encode())


def script(run: models.Run, command: AgentCommand) -> list[Step]:
    init = line({"type": "system", "subtype": "init", "model": "m", "tools": [], "cwd": "/w"})
    if "--resume" in command.argv:
        done = {"type": "result", "subtype": "success", "is_error": False, "result": "ok"}
        return [init, line(done), Step("exit", exit=ExitInfo(exit_code=0))]
    warn = {"status": "allowed_warning", "resetsAt": time.time() + 60, "utilization": 0.8,
            "rateLimitType": "five_hour"}  # fmt: skip
    limit = {"status": "rejected", "resetsAt": time.time() + 7200, "rateLimitType": "five_hour"}
    error = {"type": "result", "subtype": "success", "is_error": True,
             "result": "You've hit your 5-hour limit", "api_error_status": 429}  # fmt: skip
    return [
        init,
        line({"type": "rate_limit_event", "rate_limit_info": warn}),
        line({"type": "rate_limit_event", "rate_limit_info": limit}),
        line(error),
        Step("exit", exit=ExitInfo(exit_code=1)),
    ]


async def status_of(api: httpx.AsyncClient, run_id: str, wanted: set[str]) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            run: dict[str, Any] = (await api.get(f"/api/runs/{run_id}")).json()
            if run["status"] in wanted:
                return run
            await asyncio.sleep(0.01)


async def test_a_parked_run_in_the_api_and_the_cockpit_and_resumed_from_its_page(
    tmp_path: Path,
) -> None:
    backend = FakeBackend(script=script)
    async with cockpit(tmp_path, backend) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        spec = {"repo": "/r", "prompt": "go"}
        run_id = (await cp.api.post("/api/runs", json={"spec": spec})).json()["id"]
        run = await status_of(cp.api, run_id, {"parked"})
        assert run["parked_until"] is not None
        assert run["warning"].startswith("the model's five-hour limit is close (80% used)")
        assert run["continuation"]["parks"] == 1
        # The digest of the model token stays inside agentfarm.
        assert "credentials_key" not in run["continuation"]
        assert "credentials_key" not in (await cp.api.get("/api/runs")).text

        page = (await browser.get(f"/runs/{run_id}")).text
        assert "parked until" in page and "UTC" in page
        assert 'id="resume-form"' in page and 'id="resume-form" hidden' not in page
        assert "limit is close" in page
        dashboard = (await browser.get("/?status=parked")).text
        assert run_id in dashboard and "parked until" in dashboard and "limit is close" in dashboard
        other = await cp.api.post("/api/runs/000000000000/resume")
        assert other.status_code == 404

        token = await page_csrf(browser, f"/runs/{run_id}")
        resumed = await browser.post(f"/runs/{run_id}/resume", data={"csrf_token": token})
        assert resumed.status_code == 303
        done = await status_of(cp.api, run_id, {"succeeded", "failed", "stopped", "lost"})
        assert done["status"] == "succeeded", done
        again = await cp.api.post(f"/api/runs/{run_id}/resume")
        assert again.status_code == 409
        assert "only a parked run can be resumed" in again.json()["error"]["message"]
        page = (await browser.get(f"/runs/{run_id}")).text
        assert 'id="resume-form"' not in page
