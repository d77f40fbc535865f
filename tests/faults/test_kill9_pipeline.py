"""``kill -9`` of the control plane at random moments of the AFK pipeline: while a label's
webhook is answered, while the status comment is posted or edited, while the state labels are
set, while the branch is pushed, while the pull request is looked for and opened, or at a
random time after the label. The fake forge (real git over HTTP) holds a tripwire: the server
is killed the moment the forge has handled the drawn request (the side effect done, the answer
not yet read) or a few ms later.

Each issue lives in its own repository, so the attempts run side by side and each kill lands
in the middle of the attempts still going. At the end every issue must have one attempt,
done; one pull request from its branch; one status comment (edited in place, never posted
twice); its branch on the forge with exactly the agent's commit on top of main; its run
ended with every numbered line once.

``AGENTFARM_FAULT_PIPELINE_KILLS`` changes the number of kills (default 20);
``AGENTFARM_FAULT_STEPS=webhook,pushed`` draws only the steps whose names hold those words.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from tests.fakes.forge import BOT, Delivery, FakeForge
from tests.faults.conftest import Serve
from tests.faults.kill9 import NUMBERED, Campaign

KILLS = int(os.environ.get("AGENTFARM_FAULT_PIPELINE_KILLS", "20"))
LINES = 25
TOKEN_SECRET = "KILL9_FORGE_TOKEN"
WEBHOOK_SECRET = "kill9-webhook-secret-0c1d2e3f"
WRITER = "alice"
CONFIG = "kill9-agent"
#: What the forge sees of an attempt: (method, path pattern with {repo}, times it comes).
STEPS: dict[str, tuple[str, str, int]] = {
    "issue looked at (webhook answered)": ("GET", r"/{repo}/issues/\d+$", 1),
    "status comment posted": ("POST", r"/{repo}/issues/\d+/comments$", 1),
    "status comment edited": ("PATCH", r"/{repo}/issues/comments/\d+$", 3),
    "state label added": ("POST", r"/{repo}/issues/\d+/labels$", 2),
    "state label removed": ("DELETE", r"/{repo}/issues/\d+/labels/", 1),
    "branch pushed": ("POST", r"/{repo}\.git/git-receive-pack$", 1),
    "pull request looked for": ("GET", r"/{repo}/pulls$", 1),
    "pull request opened": ("POST", r"/{repo}/pulls$", 1),
}


class TrippedForge(FakeForge):
    """A fake forge that kills the server once a request matches the armed tripwire."""

    trip: tuple[str, re.Pattern[str], int, float, int] | None = None
    fired = threading.Event()

    def arm(self, method: str, pattern: str, nth: int, delay: float, pid: int) -> None:
        with self.lock:
            self.fired = threading.Event()
            self.trip = (method, re.compile(pattern), nth, delay, pid)

    def disarm(self) -> None:
        with self.lock:
            self.trip = None

    def record(self, request: Request, authorized: bool, body: Any, status: int) -> None:
        super().record(request, authorized, body, status)
        with self.lock:
            if self.trip is None or status >= 400:
                return
            method, pattern, nth, delay, pid = self.trip
            if request.method != method or not pattern.search(request.url.path):
                return
            if nth > 1:
                self.trip = (method, pattern, nth - 1, delay, pid)
                return
            self.trip = None
            fired = self.fired

        def fire() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            fired.set()

        threading.Timer(delay, fire).start()


@dataclass
class Issue:
    repo: str
    number: int
    step: str


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[TrippedForge]:
    fake = TrippedForge(tmp_path / "forge", kind="github")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def set_up(campaign: Campaign, forge: FakeForge, repos: list[str]) -> str:
    """The agent's config, the bot token, the forge (webhooks only): its webhook URL."""
    command = {"argv": ["sh", "-c", NUMBERED, "sh", f"{LINES} 0.01 commit"], "prompt": "none"}
    config = {
        "name": CONFIG,
        "repo": forge.git_url(repos[0]),
        "agent": "command",
        "command": command,
        "prompt": "Do what the issue asks.",
    }
    with campaign.server.client() as c:
        assert c.post("/api/configs", json=config).status_code == 201
        response = c.put(f"/api/secrets/{TOKEN_SECRET}", json={"value": forge.token})
        assert response.status_code == 204, response.text
        body = {
            "name": "kill9",
            "kind": "github",
            "base_url": forge.api_url,
            "token_secret": TOKEN_SECRET,
            "webhook_secret": WEBHOOK_SECRET,
            "repos": repos,
            "config": CONFIG,
        }
        response = c.post("/api/forges", json=body)
        assert response.status_code == 201, response.text
        url = str(response.json().get("webhook_url") or "/api/forges/kill9/webhook")
    return url if url.startswith("http") else campaign.server.url + url


def deliver(delivery: Delivery) -> int | None:
    """Post a delivery as the forge does; its status, or None when the server did not answer."""
    try:
        return delivery.send(timeout=10).status_code
    except httpx.HTTPError:
        return None


def attempts(campaign: Campaign) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = campaign.get("/api/pipeline", limit=1000)["attempts"]
    return found


def forge_branches(forge: FakeForge, repo: str) -> list[str]:
    out = subprocess.run(
        ["git", "--git-dir", str(forge.repos[repo].bare), "for-each-ref", "refs/heads",
         "--format=%(refname:short)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return sorted(out.stdout.split())


def commits_on(forge: FakeForge, repo: str, branch: str) -> list[str]:
    out = subprocess.run(
        ["git", "--git-dir", str(forge.repos[repo].bare), "log", "--format=%s", f"main..{branch}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.splitlines()


def test_kill9_during_the_pipelines_comments_labels_push_and_pull_request(
    serve: Serve, forge: TrippedForge, fault_seed: int
) -> None:
    repos = [f"acme/k{i}" for i in range(KILLS)]
    for repo in repos:
        forge.create_repo(repo)
        forge.add_collaborator(repo, WRITER, "write")
    env = {"AGENTFARM_STOP_GRACE_SECONDS": "2", "AGENTFARM_MAX_CONCURRENT_RUNS": "16"}
    campaign = Campaign(serve, env, fault_seed)
    campaign.server.env["AGENTFARM_PUBLIC_URL"] = campaign.server.url
    campaign.env["AGENTFARM_PUBLIC_URL"] = campaign.server.url
    hook = set_up(campaign, forge, repos)
    for repo in repos:
        forge.add_webhook(repo, hook, WEBHOOK_SECRET)
    rng = campaign.rng
    issues: list[Issue] = []
    steps = [*STEPS, "webhook answered", "any time"]
    if only := os.environ.get("AGENTFARM_FAULT_STEPS"):  # e.g. "webhook,pushed": those only
        steps = [s for s in steps if any(word.strip() in s for word in only.split(","))]

    for repo in repos:
        step = rng.choice(steps)
        number = forge.open_issue(repo, f"Change {repo}", "Please record a change.", by="carol")
        issues.append(Issue(repo, number, step))
        delay = rng.choice([0.0, rng.uniform(0, 0.05)])
        pid = campaign.server.proc.pid if campaign.server.proc else 0
        if step in STEPS:
            method, pattern, times = STEPS[step]
            nth = rng.randint(1, times)
            forge.arm(method, pattern.replace("{repo}", re.escape(repo)), nth, delay, pid)
        deliveries = forge.label(repo, number, "agentfarm", by=WRITER)
        if step == "webhook answered":
            time.sleep(delay)  # the answer is read; the kill comes just after
            answers = [deliver(d) for d in deliveries]
            campaign.kill(step, delay, f" {repo}")
        elif step == "any time":
            answers = [deliver(d) for d in deliveries]
            delay = rng.uniform(0, 4)
            time.sleep(delay)
            campaign.kill(step, delay, f" {repo}")
        else:
            answers = [deliver(d) for d in deliveries]
            fired = forge.fired.wait(30)
            forge.disarm()
            note = f" {repo}" + ("" if fired else " (not reached: killed at 30 s)")
            campaign.kill(step, delay, note)
        # A forge redelivers what was not answered 2xx (a person clicks "Redeliver").
        for delivery, answer in zip(deliveries, answers, strict=True):
            if answer is None or answer >= 300:
                assert (deliver(delivery) or 500) < 300, campaign.where()

    def settled() -> bool:
        found = attempts(campaign)
        return len(found) >= len(issues) and all(
            a["state"] in ("done", "failed", "stopped", "ignored") for a in found
        )

    campaign.wait_for("every attempt to end", settled, timeout=180)
    by_repo: dict[str, list[dict[str, Any]]] = {}
    for attempt in attempts(campaign):
        by_repo.setdefault(attempt["repo"], []).append(attempt)
    for issue in issues:
        context = f"{issue.repo}#{issue.number} (killed at: {issue.step}) {campaign.where()}"
        made = by_repo.get(issue.repo, [])
        assert len(made) == 1, f"attempts {made} {context}"
        attempt = made[0]
        assert attempt["state"] == "done", f"{attempt} {context}"
        pulls = forge.pulls(issue.repo)
        assert len(pulls) == 1, f"pull requests {[p.pull for p in pulls]} {context}"
        assert pulls[0].pull is not None and pulls[0].pull["head"] == attempt["branch"], context
        comments = forge.issue_comments(issue.repo, issue.number)
        assert [c.author for c in comments] == [BOT], f"comments {comments} {context}"
        posted = [
            r for r in forge.requests
            if r.method == "POST" and r.status < 300
            and r.path.endswith(f"/{issue.repo}/issues/{issue.number}/comments")
        ]  # fmt: skip
        assert len(posted) == 1, f"the status comment was posted {len(posted)} times {context}"
        assert forge.issue_comments(issue.repo, pulls[0].number) == [], context
        labels = forge.issue_labels(issue.repo, issue.number)
        assert "agentfarm:done" in labels and "agentfarm:in-progress" not in labels, context
        assert forge_branches(forge, issue.repo) == sorted(["main", attempt["branch"]]), context
        assert commits_on(forge, issue.repo, attempt["branch"]) == [f"numbered {LINES}"], context
        run = campaign.run(attempt["run_id"])
        assert run["status"] == "succeeded", campaign.explain(run)
        campaign.check_run(run, LINES)
    print(campaign.summary())
