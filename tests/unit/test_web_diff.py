"""A run's changes over the API (`GET /api/runs/{id}/diff`) and on its page (a Changes section
loaded when opened): escaped file names and patch, the cut said, and why there are none."""

from __future__ import annotations

from typing import Any

from agentfarm.backends.fake import FakeBackend, Step, claude_like_script
from agentfarm.domain import diffs, models

from .conftest import AppFactory
from .test_api import wait_running, wait_terminal

SPEC = {"spec": {"repo": "/srv/repo", "prompt": "p"}}
HOSTILE = '<img src=x onerror="alert(1)">\nline.txt'


def sample(branch: str) -> diffs.RunDiff:
    patch = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+<script>alert(1)</script>\n"
    files = [
        diffs.FileChange(path=HOSTILE, status="added", additions=1),
        diffs.FileChange(path="new", old_path="old", status="renamed", deletions=1),
        diffs.FileChange(path="logo.png", status="modified", binary=True),
    ]
    return diffs.RunDiff(
        base="a" * 40, base_branch="main", branch=branch, files=files, additions=1,
        deletions=1, patch=patch, truncated=True, limit=4096,
    )  # fmt: skip


async def test_the_diff_over_the_api_and_on_the_run_page(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    async with app_client() as client:
        run: dict[str, Any] = (await client.post("/api/runs", json=SPEC)).json()
        await wait_terminal(client, run["id"])
        none = await client.get(f"/api/runs/{run['id']}/diff")
        assert none.status_code == 409 and "keeps no workspace" in none.text
        fake_backend.world.run_diffs[run["id"]] = sample(run["branch"])
        got = await client.get(f"/api/runs/{run['id']}/diff")
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["files"][0]["path"] == HOSTILE and body["truncated"] is True
        assert {"base", "branch", "files", "additions", "deletions", "patch"} <= set(body)
        assert (await client.get("/api/runs/nope12345678/diff")).status_code == 404

        page = (await client.get(f"/runs/{run['id']}")).text
        assert f'hx-get="/runs/{run["id"]}/changes"' in page and "Changes" in page
        changes = await client.get(f"/runs/{run['id']}/changes")
        assert changes.status_code == 200
        html = changes.text
        assert "<img" not in html and "<script>" not in html
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;⏎line.txt" in html
        assert '<span class="diff-add">+&lt;script&gt;alert(1)&lt;/script&gt;</span>' in html
        assert '<span class="diff-del">-old</span>' in html
        assert "old &rarr; new" in html or "old → new" in html
        assert "binary" in html and "The patch is cut after" in html
        assert "2+" not in html and "3 files changed" in html


async def test_a_running_run_has_no_changes_yet(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    def slow(run: models.Run, command: Any) -> list[Step]:
        steps = claude_like_script(run, command)
        return [*steps[:2], Step("stdout", b"{}", delay=60), *steps[2:]]

    fake_backend.script = slow
    async with app_client() as client:
        run = (await client.post("/api/runs", json=SPEC)).json()
        await wait_running(client, run["id"])
        fake_backend.world.run_diffs[run["id"]] = sample(run["branch"])
        early = await client.get(f"/api/runs/{run['id']}/diff")
        assert early.status_code == 409 and "shown once it has ended" in early.text
        note = (await client.get(f"/runs/{run['id']}/changes")).text
        assert 'id="changes-note"' in note and "shown once it has ended" in note
        await client.post(f"/api/runs/{run['id']}/stop")
        await wait_terminal(client, run["id"])
