"""A farm wired to a fake forge, for the pipeline's end-to-end tests and its benchmark.

One :class:`Farm` is a real ``agentfarm serve`` process (the real Claude Code CLI against the
scripted fake model) and one :class:`FakeForge` of one kind with real bare repositories. The
forge is added through the API, as a person would: the bot token stored as a secret, the
forge with the fake's API URL and a webhook secret, and the fake's webhooks pointed at the
server. Tests act as forge users through the fake and watch what the forge records.

Every wait is on observable state with a generous deadline; nothing asserts how long it took.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.fakes import anthropic_api as model_api
from tests.fakes.forge import BOT, Delivery, FakeForge, Kind
from tests.integration.server import Server

T = TypeVar("T")
TOKEN_SECRET = "E2E_FORGE_TOKEN"
WEBHOOK_SECRET = "e2e-webhook-secret-5f1d0c9a7b"
TERMINAL = {"done", "failed", "stopped", "ignored"}
#: Who may write to every repository (a collaborator), and who may not.
WRITER, OUTSIDER = "alice", "mallory"
DEADLINE = 180.0


def commit_turns(tag: str) -> list[model_api.Turn]:
    """The model's side of a run that changes the repository: one commit, then a summary.
    Appending keeps every run's change distinct, so follow-ups always have something new."""
    command = f"echo 'change {tag}' >> CHANGES.md && git add -A && git commit -q -m 'Record {tag}'"
    return [
        model_api.tool_use("Bash", {"command": command, "description": "Commit the change"}),
        model_api.text(f"I recorded {tag} in CHANGES.md and committed it."),
    ]


@dataclass
class Farm:
    kind: Kind
    forge: FakeForge
    server: Server
    model: model_api.FakeAnthropic
    name: str
    repos: list[str]
    webhook_url: str = ""
    #: What one test leaves for the next (the pull request the follow-ups work on).
    state: dict[str, Any] = field(default_factory=dict)

    # -- set-up --

    def api(self) -> httpx.Client:
        return self.server.client()

    def add_forge(
        self,
        *,
        poll_seconds: int = 0,
        name: str | None = None,
        repos: list[str] | None = None,
        hooks: bool = True,
    ) -> dict[str, Any]:
        """The token as a stored secret, then the forge, then (``hooks``) the fake's
        webhooks. By default the farm's own forge; another ``name`` adds a second one on the
        same fake forge (for other ``repos``)."""
        name, repos = name or self.name, repos or self.repos
        with self.api() as c:
            response = c.put(f"/api/secrets/{TOKEN_SECRET}", json={"value": self.forge.token})
            assert response.status_code == 204, response.text
            response = c.post(
                "/api/forges",
                json={
                    "name": name,
                    "kind": self.kind,
                    "base_url": self.forge.api_url,
                    "token_secret": TOKEN_SECRET,
                    "webhook_secret": WEBHOOK_SECRET,
                    "repos": repos,
                    "poll_seconds": poll_seconds,
                },
            )
            assert response.status_code == 201, response.text
            created: dict[str, Any] = response.json()
        url = created.get("webhook_url") or f"/api/forges/{name}/webhook"
        url = url if url.startswith("http") else self.server.url + url
        if name == self.name:
            self.webhook_url = url
        for repo in repos if hooks else ():
            self.forge.add_webhook(repo, url, WEBHOOK_SECRET)
        return created

    def scenario(self, tag: str) -> str:
        """A marker for a prompt: the model answers it with one commit (``commit_turns``)."""
        name = f"afk-{self.kind}-{tag}"
        return self.model.register(name, commit_turns(name))

    def requests_for(self, tag: str) -> list[model_api.RecordedRequest]:
        return self.model.requests_for(f"afk-{self.kind}-{tag}")

    # -- acting on the forge --

    def deliver(self, deliveries: Iterable[Delivery]) -> list[httpx.Response]:
        """Post each delivery as the forge would; a 5xx is redelivered once, as forges do."""
        answers = []
        for delivery in deliveries:
            response = delivery.send()
            if response.status_code >= 500:
                response = delivery.send()
            assert response.status_code < 300, (response.status_code, response.text)
            answers.append(response)
        return answers

    def label(self, repo: str, number: int, *, by: str = WRITER) -> list[Delivery]:
        deliveries = self.forge.label(repo, number, "agentfarm", by=by)
        self.deliver(deliveries)
        return deliveries

    # -- what the farm did --

    def runs(self, repo: str) -> list[dict[str, Any]]:
        """The runs made for ``repo`` (their spec clones its URL), oldest first."""
        with self.api() as c:
            runs: list[dict[str, Any]] = c.get("/api/runs", params={"limit": 1000}).json()
        wanted = f"/{repo}.git"
        return [r for r in reversed(runs) if str(r["spec"]["repo"]).rstrip("/").endswith(wanted)]

    def attempts(self, repo: str | None = None) -> list[dict[str, Any]]:
        """The pipeline's attempts as ``GET /api/pipeline`` shows them, newest first."""
        with self.api() as c:
            response = c.get("/api/pipeline", params={"limit": 1000})
        if response.status_code != 200:
            return []
        found: list[dict[str, Any]] = response.json().get("attempts", [])
        return [a for a in found if repo is None or a.get("repo") == repo]

    def bot_comments(self, repo: str, number: int) -> list[str]:
        return [c.body for c in self.forge.issue_comments(repo, number) if c.author == BOT]

    def comment_history(self, repo: str, number: int) -> list[str]:
        """Every body the bot's comments on the issue had, in order (created, then edits)."""
        ids = {c.id for c in self.forge.issue_comments(repo, number) if c.author == BOT}
        bodies = []
        for r in list(self.forge.requests):
            if r.status >= 300 or not isinstance(r.body, dict) or "body" not in r.body:
                continue
            created = r.method == "POST" and r.path.endswith(f"/{repo}/issues/{number}/comments")
            edited = r.method == "PATCH" and r.path.rsplit("/", 1)[-1] in {str(i) for i in ids}
            if created or edited:
                bodies.append(str(r.body["body"]))
        return bodies

    def labels_added(self, repo: str, number: int) -> list[str]:
        """Label names the bot added to the issue, in order (ids resolved for Forgejo)."""
        names = {i: label["name"] for i, label in self.forge.repos[repo].labels.items()}
        added = []
        for r in list(self.forge.requests):
            if r.method != "POST" or r.status >= 300:
                continue
            if not r.path.endswith(f"/{repo}/issues/{number}/labels"):
                continue
            values = r.body.get("labels") if isinstance(r.body, dict) else r.body
            for value in values or []:
                added.append(names.get(value, str(value)) if isinstance(value, int) else value)
        return added

    def settled(self, repo: str) -> bool:
        """Every attempt on ``repo`` ended and every run made for it finished."""
        runs_done = all(
            r["status"] not in ("queued", "starting", "running") for r in self.runs(repo)
        )
        attempts = self.attempts(repo)
        return runs_done and all(a.get("state") in TERMINAL for a in attempts)

    # -- diagnostics for a failed wait --

    def describe(self, repo: str | None = None) -> str:
        lines = [f"--- {self.kind} forge requests (last 25):"]
        for r in self.forge.requests[-25:]:
            body = json.dumps(r.body)[:160] if r.body is not None else ""
            lines.append(f"{r.method} {r.path} -> {r.status} {body}")
        if repo is not None:
            for number, issue in sorted(self.forge.repos[repo].issues.items()):
                lines.append(
                    f"--- {repo}#{number} labels={self.forge.issue_labels(repo, number)} "
                    f"pull={issue.pull}"
                )
                for comment in self.forge.issue_comments(repo, number):
                    lines.append(f"  [{comment.author}] {comment.body[:300]!r}")
            try:
                lines.append(f"--- attempts: {json.dumps(self.attempts(repo))[:1500]}")
                runs = [(r["id"], r["status"], r.get("error")) for r in self.runs(repo)]
                lines.append(f"--- runs: {runs}")
            except (httpx.HTTPError, ValueError) as exc:
                lines.append(f"--- the server did not answer: {exc}")
        log = self.server.log.read_text(errors="replace") if self.server.log.exists() else ""
        lines.append("--- server log (tail):\n" + log[-2500:])
        return "\n".join(lines)


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    farm: Farm | None = None,
    repo: str | None = None,
    timeout: float = DEADLINE,
) -> T:
    """Poll ``probe`` until it returns something truthy; a generous deadline, then a failure
    that shows what the forge and the farm had done."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = farm.describe(repo) if farm is not None else ""
            raise AssertionError(f"gave up waiting for {what}\n{detail}")
        time.sleep(0.2)


def git_parent(bare: Path, sha: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(bare), "rev-parse", f"{sha}^"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
