"""Issue 9's orchestration surfaces on a real server with the real local backend, bubblewrap and
git: a dispatched command agent that commits, its changes (API and run page) against the
commit it started from, and scoped tokens made with the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import agent_script, git
from tests.integration.server import Server

pytestmark = pytest.mark.integration

HOSTILE = "<img src=x onerror=alert(1)>.txt"
AGENT = f"""#!/bin/sh
set -e
read -r prompt
printf '%s\\n' "$prompt" >> README.md
echo '<script>alert(1)</script>' > '{HOSTILE}'
git add -A
git -c user.name=agent -c user.email=agent@example.invalid commit -qm "$prompt"
"""


@pytest.fixture
def server(serve: Callable[[dict[str, str]], Server]) -> Server:
    return serve({})


def test_a_dispatched_run_shows_its_changes(server: Server, source: Path, tmp_path: Path) -> None:
    agent = agent_script(tmp_path, AGENT)
    spec = {"repo": str(source), "prompt": "one more line", "agent": "command",
            "command": {"argv": [agent], "prompt": "stdin"}}  # fmt: skip
    body = {"idempotency_key": "ci/build-7", "spec": spec}
    start = git(source, "rev-parse", "main").strip()
    with server.client() as c:
        first = c.post("/api/orchestration/dispatch", json=body)
        assert first.status_code == 201, first.text
        run_id = first.json()["run_id"]
        run = server.wait_status(run_id, {"succeeded", "failed"}, timeout=60)
        assert run["status"] == "succeeded", (
            run["error"],
            [
                e["data"]
                for e in c.get(f"/api/runs/{run_id}/events").json()
                if e["type"] != "run.status"
            ],
        )
        again = c.post("/api/orchestration/dispatch", json=body)
        assert again.status_code == 200 and again.json()["run_id"] == run_id
        # The source moves on: not part of the run's changes.
        (source / "LATER.md").write_text("later\n")
        git(source, "add", "-A")
        git(source, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "later")
        diff = c.get(f"/api/runs/{run_id}/diff")
        assert diff.status_code == 200, diff.text
        found = diff.json()
        assert found["base"] == start and found["branch"] == f"agentfarm/{run_id}"
        counts = {f["path"]: (f["status"], f["additions"], f["deletions"]) for f in found["files"]}
        assert counts == {"README.md": ("modified", 1, 0), HOSTILE: ("added", 1, 0)}
        assert "+one more line" in found["patch"] and "LATER" not in found["patch"]
        html = c.get(f"/runs/{run_id}/changes").text
        assert "&lt;img src=x onerror=alert(1)&gt;.txt" in html and "<script>" not in html
        assert "<img" not in html
        assert len(c.get("/api/runs").json()) == 1


def test_scoped_tokens_from_the_cli(server: Server) -> None:
    made = server.cli("user", "add", "ada", input="correct horse battery\n")
    assert made.returncode == 0, made.stderr
    created = server.cli("user", "token", "create", "ci", "--scope", "read", "--user", "ada")
    assert created.returncode == 0, created.stderr
    assert "read" in created.stderr and "not shown again" in created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("afn_")
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as reader:
        assert reader.get("/api/runs").status_code == 200
        refused = reader.post("/api/runs", json={"config": "x"})
        assert refused.status_code == 403 and "missing scope `operate`" in refused.text
    listed = server.cli("user", "token", "ls")
    assert listed.returncode == 0 and "ci" in listed.stdout and "(read)" in listed.stdout
    token_id = listed.stdout.split()[0]
    assert server.cli("user", "token", "rm", token_id).returncode == 0
    bad = server.cli("user", "token", "create", "x", "--scope", "root", "--user", "ada")
    assert bad.returncode != 0 and "unknown scope" in bad.stderr
