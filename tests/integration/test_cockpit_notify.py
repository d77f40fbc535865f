"""The settings page's Notifications card in a real browser against a real server (fixtures
from ``test_cockpit``): the targets are listed by scheme and host, "Send a test" shows the
outcome inline (htmx) and the message reaches a loopback JSON endpoint; the "Notify this
browser" button appears where the browser has the Push API, with the service worker live."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api as fake
from tests.fakes.json_endpoint import JsonEndpoint
from tests.integration import test_cockpit as cockpit
from tests.integration.server import Server
from tests.integration.test_cockpit import PASSWORD, shot, sign_in, start_server

# The browser and the signed-in phone are test_cockpit's fixtures; the server is this module's.
chromium, phone = cockpit.chromium, cockpit.phone

pytestmark = [pytest.mark.integration, pytest.mark.browser]

HOOK_PATH = "/hook/secret-path-token-77"


@pytest.fixture
def server(
    tmp_path: Path, claude_bin: str, fake_anthropic: fake.FakeAnthropic, endpoint: JsonEndpoint
) -> Iterator[Server]:
    srv = start_server(
        tmp_path, claude_bin, fake_anthropic.base_url,
        AGENTFARM_NOTIFY_URLS=endpoint.url(HOOK_PATH),
    )  # fmt: skip
    result = srv.cli("user", "add", "ada", input=PASSWORD + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    yield srv
    srv.stop()


def test_send_a_test_from_the_settings_page(
    phone: Any, server: Server, endpoint: JsonEndpoint
) -> None:
    page = phone
    sign_in(page)
    page.get_by_role("link", name="Settings").click()
    card = page.locator("#notifications")
    assert "json://127.0.0.1" in card.inner_text()
    assert "secret-path-token-77" not in page.content()
    page.get_by_role("button", name="Send a test").click()
    page.get_by_text("Test sent to 1 of 1 target").wait_for()
    assert "/settings" in page.url  # swapped in place, no navigation
    [got] = endpoint.wait_for(1)
    assert got.path == HOOK_PATH
    assert got.json()["title"] == "agentfarm: test notification"
    # Chromium has the Push API on this (loopback, so secure) origin: the button shows.
    page.get_by_role("button", name="Notify this browser").wait_for()
    worker = page.evaluate(
        "navigator.serviceWorker.ready.then(r => r.active && r.active.scriptURL)"
    )
    assert worker.endswith("/sw.js")
    shot(page, "settings-notifications")
