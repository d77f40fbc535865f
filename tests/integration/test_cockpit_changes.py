"""A run's Changes section in a real browser at a phone's viewport: loaded when opened, the
agent's file names and patch shown as text, long lines wrapped inside the screen."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import agent_script
from tests.integration.server import Server
from tests.integration.test_cockpit import PASSWORD, PHONE, chromium, shot, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.browser]
__all__ = ["chromium"]  # the browser fixture, shared with the cockpit's tests

HOSTILE = "<img src=x onerror=alert(1)>.txt"
AGENT = f"""#!/bin/sh
set -e
echo '<script>document.title="pwned"</script>' > '{HOSTILE}'
i=0; while [ $i -lt 40 ]; do printf 'word%s ' $i; i=$((i+1)); done > long-line.txt
git add -A
git -c user.name=agent -c user.email=agent@example.invalid commit -qm work
"""


@pytest.fixture
def server(serve: Callable[[dict[str, str]], Server]) -> Server:
    srv = serve({})
    result = srv.cli("user", "add", "ada", input=PASSWORD + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    return srv


@pytest.fixture
def phone(chromium: Any, server: Server) -> Iterator[Any]:
    context = chromium.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True,
        base_url=server.url, color_scheme="dark",
    )  # fmt: skip
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    context.close()


def test_the_changes_of_a_run_on_a_phone(
    phone: Any, server: Server, source: Path, tmp_path: Path
) -> None:
    agent = agent_script(tmp_path, AGENT)
    spec = {"repo": str(source), "prompt": "p", "agent": "command",
            "command": {"argv": [agent], "prompt": "none"}}  # fmt: skip
    with server.client() as c:
        run_id = c.post("/api/runs", json={"spec": spec}).json()["id"]
    assert server.wait_status(run_id, {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"
    page = phone
    sign_in(page)
    page.goto(f"/runs/{run_id}")
    assert page.locator("#changes-summary").count() == 0  # not loaded until opened
    page.locator("#changes > summary").click()
    page.locator("#changes-summary").wait_for()
    assert "2 files changed" in page.locator("#changes-summary").inner_text()
    assert HOSTILE in page.locator("ul.files").inner_text()  # shown as text
    assert page.locator("#changes img").count() == 0
    assert "<script>" in page.locator("pre.patch").inner_text()
    assert page.title() != "pwned"
    # Nothing is wider than the phone: long patch lines wrap.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    page.locator("#changes").scroll_into_view_if_needed()
    shot(page, "run-changes")
