"""A fake forge for tests: the documented REST and webhook shapes of GitHub or Forgejo/Gitea,
in front of real bare repositories served over git's smart HTTP protocol.

One :class:`FakeForge` is one forge of one ``kind``: a real HTTP server on 127.0.0.1 (starlette
under uvicorn in a background thread, so sync tests, async tests and separate server processes
all reach it the same way). GitHub's API is at the root (``/repos/o/r/...``, ``Authorization:
Bearer``), Forgejo's under ``/api/v1`` (``Authorization: token``); git is at ``/o/r.git`` for
both, with HTTP Basic and the token as password, as git sends it. The token is checked on every
request (401 otherwise) and every request is recorded.

Tests act as users through methods (``label``, ``unlabel``, ``comment``, ``set_status``) that
change the state and return the signed webhook :class:`Delivery` for each registered hook;
``delivery.send()`` (or ``await delivery.asend()``) posts it. The fake never sends on its own.
``fail_next`` makes the next API calls fail with a 5xx or a rate limit; ``block`` makes every
call to matching endpoints fail until ``unblock`` (a forge that is down for one operation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import forge_api, forge_git, threaded

Kind = Literal["github", "forgejo"]
FAKE_FORGE_TOKEN = "fake-forge-token-0123456789abcdef"
#: The account the token belongs to: the author of what the API creates.
BOT = "agentfarm-bot"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    #: The scheme of the Authorization header ("Bearer", "token", "Basic") or "".
    auth: str
    authorized: bool
    body: Any
    status: int = 0
    #: When it was answered (``time.time()``), for benchmarks.
    at: float = 0.0


@dataclass(frozen=True)
class Delivery:
    """One signed webhook delivery, ready to post."""

    url: str
    event: str
    delivery_id: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> Any:
        return json.loads(self.body)

    def send(self, timeout: float = 30.0) -> httpx.Response:
        return httpx.post(self.url, content=self.body, headers=self.headers, timeout=timeout)

    async def asend(self, timeout: float = 30.0) -> httpx.Response:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await client.post(self.url, content=self.body, headers=self.headers)


@dataclass
class Failure:
    status: int
    retry_after: int | None
    reset_in: int | None


@dataclass
class Hook:
    url: str
    secret: str


@dataclass
class Issue:
    number: int
    id: int
    title: str
    body: str
    author: str
    labels: list[int] = field(default_factory=list)
    state: str = "open"
    #: Set for a pull request: {"head", "base", "draft"}.
    pull: dict[str, Any] | None = None
    comments: list[int] = field(default_factory=list)
    #: Label events, oldest first: (action "labeled"/"unlabeled", label id, login, when).
    events: list[tuple[str, int, str, str]] = field(default_factory=list)
    created_at: str = ""


@dataclass
class Comment:
    id: int
    repo: str
    number: int
    body: str
    author: str
    created_at: str
    updated_at: str


@dataclass
class Repo:
    name: str
    id: int
    bare: Path
    owner: str
    default_branch: str
    labels: dict[int, dict[str, Any]] = field(default_factory=dict)
    issues: dict[int, Issue] = field(default_factory=dict)
    collaborators: dict[str, str] = field(default_factory=dict)
    hooks: list[Hook] = field(default_factory=list)
    #: sha -> commit statuses, oldest first; sha -> GitHub check runs.
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    check_runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeForge:
    def __init__(
        self,
        root: Path,
        *,
        kind: Kind = "github",
        token: str = FAKE_FORGE_TOKEN,
        old_gitea: bool = False,
        api_prefix: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.root = root
        self.kind: Kind = kind
        self.token = token
        #: Forgejo only: labels by id only, no collaborator permission endpoint.
        self.old_gitea = old_gitea
        #: Where the API lives: GitHub at the root (GitHub Enterprise: "/api/v3"), Forgejo at
        #: "/api/v1".
        self.api_prefix = (
            ("" if kind == "github" else "/api/v1") if api_prefix is None else api_prefix
        )
        self.host, self.port = host, port
        #: Caps every page (per_page / limit) so tests can exercise pagination.
        self.page_size_cap = 100
        self.repos: dict[str, Repo] = {}
        self.comments: dict[int, Comment] = {}
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        #: (method, compiled path pattern, status): persistent failures, see :meth:`block`.
        self.blocks: list[tuple[str, re.Pattern[str], int]] = []
        self.lock = threading.RLock()
        self._ids = itertools.count(1000)
        self._served = threaded.ThreadedServer()
        (root / "git").mkdir(parents=True, exist_ok=True)

    # -- addresses --

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """What a client is configured with (GitHub's root, Forgejo's ``/api/v1``)."""
        return self.base_url + self.api_prefix

    def git_url(self, repo: str, *, user: str = "x-access-token", token: str | None = None) -> str:
        """The clone URL; with ``token`` it carries the credentials inline (tests only)."""
        auth = f"{user}:{token}@" if token is not None else ""
        return f"http://{auth}{self.host}:{self.port}/{repo}.git"

    def next_id(self) -> int:
        return next(self._ids)

    # -- set-up --

    def create_repo(
        self,
        repo: str,
        *,
        default_branch: str = "main",
        files: Mapping[str, str] | None = None,
        labels: Iterable[str] = ("agentfarm", "bug"),
    ) -> Path:
        """A repository owned by its owner part, with a first commit of ``files``."""
        bare = forge_git.create_bare(
            self.root / "git",
            repo,
            default_branch=default_branch,
            files={"README.md": f"# {repo}\n"} if files is None else files,
            home=self.root,
        )
        with self.lock:
            state = Repo(repo, self.next_id(), bare, repo.split("/")[0], default_branch)
            self.repos[repo] = state
            for name in labels:
                self.create_label(repo, name)
        return bare

    def create_label(self, repo: str, name: str, color: str = "ededed") -> dict[str, Any]:
        with self.lock:
            label = {"id": self.next_id(), "name": name, "color": color, "description": ""}
            self.repos[repo].labels[label["id"]] = label
            return label

    def add_collaborator(self, repo: str, user: str, permission: str = "write") -> None:
        with self.lock:
            self.repos[repo].collaborators[user] = permission

    def add_webhook(self, repo: str, url: str, secret: str) -> None:
        with self.lock:
            self.repos[repo].hooks.append(Hook(url, secret))

    def open_issue(
        self,
        repo: str,
        title: str,
        body: str = "",
        *,
        by: str = "alice",
        labels: Iterable[str] = (),
    ) -> int:
        with self.lock:
            state = self.repos[repo]
            number = max([0, *state.issues]) + 1
            issue = Issue(number, self.next_id(), title, body, by, created_at=now())
            state.issues[number] = issue
            for name in labels:
                issue.labels.append(self.label_id(repo, name, create=True))
            return number

    def open_pull(
        self, repo: str, head: str, *, base: str = "main", title: str = "Change", by: str = "bob"
    ) -> int:
        """A pull request from the pushed branch ``head``, opened by a user."""
        with self.lock:
            if self.branch_sha(repo, head) is None:
                raise KeyError(f"{repo} has no branch {head!r}: push it first")
            number = max([0, *self.repos[repo].issues]) + 1
            pull = {"head": head, "base": base, "draft": False}
            issue = Issue(number, self.next_id(), title, "", by, pull=pull, created_at=now())
            self.repos[repo].issues[number] = issue
            return number

    def close_issue(self, repo: str, number: int) -> None:
        with self.lock:
            self.repos[repo].issues[number].state = "closed"

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        *,
        retry_after: int | None = None,
        reset_in: int | None = None,
    ) -> None:
        """The next ``count`` API calls answer ``status``; with ``retry_after`` (seconds) or
        ``reset_in`` (seconds until X-RateLimit-Reset) they are rate limits."""
        with self.lock:
            self.failures.extend(Failure(status, retry_after, reset_in) for _ in range(count))

    def block(self, method: str, path_pattern: str, status: int = 503) -> None:
        """Every ``method`` API call whose path (after the API prefix) matches
        ``path_pattern`` (a regular expression, searched) answers ``status`` until
        :meth:`unblock`; the call is recorded with that status."""
        with self.lock:
            self.blocks.append((method.upper(), re.compile(path_pattern), status))

    def unblock(self) -> None:
        with self.lock:
            self.blocks.clear()

    # -- inspection --

    def issue(self, repo: str, number: int) -> Issue:
        with self.lock:
            return self.repos[repo].issues[number]

    def issue_labels(self, repo: str, number: int) -> list[str]:
        with self.lock:
            state = self.repos[repo]
            return [state.labels[i]["name"] for i in state.issues[number].labels]

    def issue_comments(self, repo: str, number: int) -> list[Comment]:
        with self.lock:
            return [self.comments[i] for i in self.repos[repo].issues[number].comments]

    def pulls(self, repo: str) -> list[Issue]:
        with self.lock:
            return [i for i in self.repos[repo].issues.values() if i.pull is not None]

    def branch_sha(self, repo: str, ref: str) -> str | None:
        return forge_git.rev_parse(self.repos[repo].bare, ref, self.root)

    def label_id(self, repo: str, name: str, *, create: bool = False) -> int:
        with self.lock:
            for label in self.repos[repo].labels.values():
                if label["name"] == name:
                    return int(label["id"])
            if not create:
                raise KeyError(name)
            return int(self.create_label(repo, name)["id"])

    # -- acting as a user; each returns the deliveries the forge would send --

    def label(self, repo: str, number: int, name: str, *, by: str) -> list[Delivery]:
        with self.lock:
            label_id = self.label_id(repo, name, create=True)
            issue = self.repos[repo].issues[number]
            if label_id not in issue.labels:
                issue.labels.append(label_id)
                issue.events.append(("labeled", label_id, by, now()))
            return self._label_deliveries(repo, issue, "labeled", label_id, by)

    def unlabel(self, repo: str, number: int, name: str, *, by: str) -> list[Delivery]:
        with self.lock:
            label_id = self.label_id(repo, name)
            issue = self.repos[repo].issues[number]
            if label_id in issue.labels:
                issue.labels.remove(label_id)
                issue.events.append(("unlabeled", label_id, by, now()))
            return self._label_deliveries(repo, issue, "unlabeled", label_id, by)

    def comment(self, repo: str, number: int, body: str, *, by: str) -> list[Delivery]:
        with self.lock:
            made = self.add_comment(repo, number, body, by)
            issue = self.repos[repo].issues[number]
            payload: dict[str, Any] = {
                "action": "created",
                "issue": forge_api.issue_json(self, repo, issue),
                "comment": forge_api.comment_json(self, made),
            }
            event = "issue_comment"
            if self.kind == "forgejo":
                payload["is_pull"] = issue.pull is not None
                if issue.pull is not None:
                    payload["pull_request"] = forge_api.pull_json(self, repo, issue)
            subtype = "pull_request_comment" if issue.pull else "issue_comment"
            return self._deliveries(repo, event, payload, by, subtype=subtype)

    def add_comment(self, repo: str, number: int, body: str, by: str) -> Comment:
        with self.lock:
            stamp = now()
            made = Comment(self.next_id(), repo, number, body, by, stamp, stamp)
            self.comments[made.id] = made
            self.repos[repo].issues[number].comments.append(made.id)
            return made

    def set_status(
        self,
        repo: str,
        ref: str,
        context: str,
        state: str,
        *,
        by: str = "ci",
        target_url: str = "",
        description: str = "",
    ) -> list[Delivery]:
        """A commit status on ``ref`` (a branch or sha). GitHub sends a ``status`` event;
        Forgejo has no commit-status webhook, so no delivery."""
        sha = self.branch_sha(repo, ref)
        if sha is None:
            raise KeyError(f"{repo} has no commit {ref!r}")
        status = {
            "id": self.next_id(),
            "context": context,
            "target_url": target_url,
            "description": description,
            "created_at": now(),
        }
        with self.lock:
            self.repos[repo].statuses.setdefault(sha, []).append({**status, "state": state})
            if self.kind != "github":
                return []
            payload = {"sha": sha, "state": state, **status}
            return self._deliveries(repo, "status", payload, by)

    def add_check_run(
        self, repo: str, ref: str, name: str, conclusion: str | None, *, details_url: str = ""
    ) -> None:
        """A GitHub check run; ``conclusion=None`` is one still in progress."""
        sha = self.branch_sha(repo, ref)
        if sha is None:
            raise KeyError(f"{repo} has no commit {ref!r}")
        with self.lock:
            self.repos[repo].check_runs.setdefault(sha, []).append(
                {
                    "id": self.next_id(),
                    "name": name,
                    "head_sha": sha,
                    "status": "completed" if conclusion else "in_progress",
                    "conclusion": conclusion,
                    "details_url": details_url,
                    "html_url": details_url,
                    "output": {"title": f"{name}: {conclusion}", "summary": ""},
                }
            )

    # -- deliveries --

    def _label_deliveries(
        self, repo: str, issue: Issue, action: str, label_id: int, by: str
    ) -> list[Delivery]:
        payload: dict[str, Any] = {"issue": forge_api.issue_json(self, repo, issue)}
        if self.kind == "github":
            payload |= {"action": action, "label": self.repos[repo].labels[label_id]}
        else:
            # Forgejo/Gitea: no `label` field; the issue's labels say what it is now.
            payload["action"] = "label_updated" if issue.labels else "label_cleared"
        return self._deliveries(repo, "issues", payload, by, subtype="issue_label")

    def _deliveries(
        self, repo: str, event: str, payload: dict[str, Any], by: str, *, subtype: str = ""
    ) -> list[Delivery]:
        state = self.repos[repo]
        payload = {
            **payload,
            "repository": forge_api.repo_json(self, state),
            "sender": forge_api.user_json(by),
        }
        body = json.dumps(payload).encode()
        out = []
        for hook in state.hooks:
            delivery_id = str(uuid.uuid4())
            digest = hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
            headers = {"Content-Type": "application/json", "User-Agent": "fake-forge"}
            if self.kind == "github":
                headers |= {
                    "X-GitHub-Event": event,
                    "X-GitHub-Delivery": delivery_id,
                    "X-Hub-Signature-256": f"sha256={digest}",
                }
            else:
                for prefix in ("X-Forgejo-", "X-Gitea-"):
                    headers |= {
                        prefix + "Event": event,
                        prefix + "Event-Type": subtype or event,
                        prefix + "Delivery": delivery_id,
                        prefix + "Signature": digest,
                    }
                headers |= {"X-Gogs-Event": event, "X-GitHub-Event": event}
            out.append(Delivery(hook.url, event, delivery_id, headers, body))
        return out

    # -- the server --

    def authorized_user(self, header: str) -> tuple[str, str | None]:
        """(scheme, user) for an Authorization header; user None when refused."""
        scheme, _, credential = header.partition(" ")
        if scheme == "Basic":
            try:
                user, _, password = base64.b64decode(credential).decode().partition(":")
            except ValueError:
                return scheme, None
            return scheme, user if self._token_ok(password) else None
        wanted = "Bearer" if self.kind == "github" else "token"
        return scheme, BOT if scheme == wanted and self._token_ok(credential) else None

    def _token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())

    def record(self, request: Request, authorized: bool, body: Any, status: int) -> None:
        scheme = request.headers.get("authorization", "").partition(" ")[0]
        with self.lock:
            self.requests.append(
                Recorded(
                    request.method,
                    request.url.path,
                    dict(request.query_params),
                    scheme,
                    authorized,
                    body,
                    status,
                    time.time(),
                )
            )

    def take_failure(self, method: str = "", path: str = "") -> Response | None:
        with self.lock:
            rest = path.removeprefix(self.api_prefix)
            for blocked_method, pattern, status in self.blocks:
                if blocked_method == method and pattern.search(rest):
                    return JSONResponse({"message": "unavailable (blocked by the test)"}, status)
            if not self.failures:
                return None
            failure = self.failures.pop(0)
        headers = {}
        if failure.retry_after is not None:
            headers["Retry-After"] = str(failure.retry_after)
        if failure.reset_in is not None:
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset"] = str(int(time.time()) + failure.reset_in)
        message = "rate limit exceeded" if headers else "internal error (injected)"
        return JSONResponse({"message": message}, failure.status, headers=headers)

    def app(self) -> Starlette:
        routes = [
            Route(self.api_prefix + path, forge_api.endpoint(self, handler), methods=methods)
            for path, handler, methods in forge_api.ROUTES
        ]
        routes.append(
            Route(
                "/{owner}/{name}.git/{rest:path}",
                self._git,
                methods=["GET", "POST"],
            )
        )
        return Starlette(routes=routes)

    async def _git(self, request: Request) -> Response:
        _scheme, user = self.authorized_user(request.headers.get("authorization", ""))
        repo = f"{request.path_params['owner']}/{request.path_params['name']}"
        if user is None:
            self.record(request, False, None, 401)
            return Response(
                "authentication required\n",
                401,
                headers={"WWW-Authenticate": 'Basic realm="fake-forge"'},
            )
        if repo not in self.repos:
            self.record(request, True, None, 404)
            return Response("no such repository\n", 404)
        self.record(request, True, None, 200)
        return await forge_git.serve(
            request,
            project_root=self.root / "git",
            path_info=f"/{repo}.git/{request.path_params['rest']}",
            user=user or BOT,
        )

    # -- lifecycle --

    def start(self) -> FakeForge:
        self.port = self._served.start(
            self.app(), self.host, self.port, name="fake-forge", what="the fake forge"
        )
        return self

    def stop(self) -> None:
        self._served.stop()

    def __enter__(self) -> FakeForge:
        return self if self._served.running else self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
