"""The command agent in the cockpit: the config form offers the agent kind and the command's
fields, and the run page and run list say which agent ran."""

from __future__ import annotations

from pathlib import Path

from .test_web_pages import FORM
from .web_helpers import cockpit, login, page_csrf

COMMAND_FORM = {**FORM, "agent": "command", "command_argv": "sh\n-c\nmake fix, then test",
                "command_prompt": "argument"}  # fmt: skip


async def test_the_config_form_offers_the_command_agent(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        form = await browser.get("/configs/new")
        assert '<option value="claude" selected>' in form.text
        assert 'name="command_argv"' in form.text and 'name="command_prompt"' in form.text
        token = await page_csrf(browser, "/configs/new")
        empty = {**COMMAND_FORM, "command_argv": "", "csrf_token": token}
        response = await browser.post("/configs/new", data=empty)
        assert response.status_code == 422 and 'id="command_argv-error"' in response.text
        bad = {**COMMAND_FORM, "command_prompt": "file", "csrf_token": token}
        response = await browser.post("/configs/new", data=bad)
        assert response.status_code == 422 and 'id="command_prompt-error"' in response.text
        ok = await browser.post("/configs/new", data={**COMMAND_FORM, "csrf_token": token})
        assert ok.status_code == 303, ok.text
        saved = (await cp.api.get("/api/configs/demo")).json()
        assert saved["agent"] == "command"
        assert saved["command"] == {
            "argv": ["sh", "-c", "make fix, then test"],
            "prompt": "argument",
        }
        edit = await browser.get(f"/configs/{saved['id']}/edit")
        assert '<option value="command" selected>' in edit.text
        assert "sh\n-c\nmake fix, then test</textarea>" in edit.text
        # A post without the agent fields (an older form) keeps the command.
        older = {**FORM, "max_turns": "3", "csrf_token": token}
        assert (await browser.post(f"/configs/{saved['id']}/edit", data=older)).status_code == 303
        assert (await cp.api.get("/api/configs/demo")).json()["command"] == saved["command"]
        # Back to Claude drops the command.
        claude = {**FORM, "agent": "claude", "csrf_token": token}
        assert (await browser.post(f"/configs/{saved['id']}/edit", data=claude)).status_code == 303
        back = (await cp.api.get("/api/configs/demo")).json()
        assert (back["agent"], back["command"]) == ("claude", None)


async def test_the_run_page_and_list_show_which_agent_ran(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        spec = {"repo": "/r", "prompt": "p", "agent": "command", "command": {"argv": ["make"]}}
        run_id = (await cp.api.post("/api/runs", json={"spec": spec})).json()["id"]
        page = await browser.get(f"/runs/{run_id}")
        head = page.text.split('id="run-head"')[1].split("</dl>")[0]
        assert "<dt>agent</dt>" in head and "command: <code>make</code>" in head
        listing = await browser.get("/")
        row = listing.text.split(f'data-run="{run_id}"')[1].split("</li>")[0]
        assert '<span class="agent">command</span>' in row
