"""The command agent in the cockpit, in a real browser against a real server (fixtures from
``test_cockpit``): the command's fields show once the agent is chosen, a config saved from the
form runs in the real sandbox, and the run page says which agent ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_cockpit as cockpit
from tests.integration.server import Server
from tests.integration.test_cockpit import launch, shot, sign_in

# The browser, the signed-in phone and the server are test_cockpit's fixtures.
chromium, phone, server = cockpit.chromium, cockpit.phone, cockpit.server

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_a_command_config_from_the_form_runs_and_its_page_names_the_agent(
    phone: Any, server: Server, source: Path
) -> None:
    page = phone
    sign_in(page)
    page.goto("/configs/new")
    fields = page.locator('[data-agent="command"]')
    assert not fields.is_visible()  # Claude is the default
    page.locator("input[name=name]").fill("echoer")
    page.get_by_label("Repository (local path or git URL)").fill(str(source))
    page.locator("textarea[name=prompt]").fill("say hello")
    page.locator("select[name=agent]").select_option("command")
    assert fields.is_visible()
    page.get_by_label("Program and arguments (one per line)").fill('sh\n-c\necho "got: $1"\nsh')
    page.get_by_label("Prompt goes").select_option("argument")
    fields.scroll_into_view_if_needed()
    shot(page, "config-form-command")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url("**/configs")
    run_id = launch(server, "echoer")
    page.goto(f"/runs/{run_id}")
    page.locator("#run-status .badge-success").wait_for(timeout=60_000)
    page.get_by_text("got: say hello").wait_for()
    assert "command" in page.locator(".run-agent").inner_text()
