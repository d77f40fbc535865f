"""Deleting a run from the cockpit, in a real browser against a real server (fixtures from
``test_cockpit``): the Delete button appears once the run has ended, asks first, and removes the
run with its files; the settings page shows the data directory's disk use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api as fake
from tests.integration import test_cockpit as cockpit
from tests.integration.server import Server
from tests.integration.test_cockpit import launch, make_config, shot, sign_in, slow_scenario

# The browser, the signed-in phone and the server are test_cockpit's fixtures.
chromium, phone, server = cockpit.chromium, cockpit.phone, cockpit.server

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_delete_a_finished_run_from_its_page(
    phone: Any, server: Server, source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    # Fails before: the run page had no Delete button.
    page = phone
    asked: list[str] = []
    page.on("dialog", lambda dialog: asked.append(dialog.message))
    marker = slow_scenario(fake_anthropic, "cockpit-delete", steps=2, delay=0.5)
    make_config(server, source, "deletable", f"{marker} go")
    sign_in(page)
    run_id = launch(server, "deletable")
    page.goto(f"/runs/{run_id}")
    delete = page.get_by_role("button", name="Delete")
    assert delete.count() == 0  # hidden while the run is live
    page.locator("#run-status .badge-success").wait_for(timeout=90_000)
    delete.wait_for()  # shown once the page learns that the run has ended
    run_dir = server.data_dir / "runs" / run_id
    assert run_dir.exists()
    shot(page, "run-delete")
    delete.click()  # the dialog handler accepts
    page.wait_for_url(f"{server.url}/")
    assert asked and asked[0].startswith("Delete this run?")
    assert page.locator(f'[data-run="{run_id}"]').count() == 0
    assert not run_dir.exists()
    with server.client() as c:
        assert c.get(f"/api/runs/{run_id}").status_code == 404
    page.get_by_role("link", name="Settings").click()
    assert "takes" in page.locator("#disk-use").inner_text()
    shot(page, "settings-disk-use")
