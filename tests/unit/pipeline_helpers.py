"""Shared by the pipeline's unit tests: an in-memory forge client, and a pipeline over a real
store and a supervisor on the fake backend (no real agent, no network)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.backends import fake
from agentfarm.backends.base import BranchOutcome, ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import models
from agentfarm.domain import pipeline as domain
from agentfarm.domain.launch import AgentCommand
from agentfarm.pipeline.forges import errors as forge_errors
from agentfarm.pipeline.forges import types
from agentfarm.pipeline.service import Pipeline
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.pipeline import PipelineStore
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import make_settings

GUARD = 20
REPO = "alice/proj"
SECRET = "webhook-secret-0123456789"
BOT = "agentfarm-bot"
#: The head every pull request of the in-memory forge has (what the fake runs push).
HEAD_SHA = "b" * 40


class Crash(BaseException):
    """The control plane dying: nothing catches it, nothing after it runs."""


@dataclass
class FakeIssue:
    title: str
    body: str
    labels: list[str] = field(default_factory=list)
    state: str = "open"
    applied_by: str | None = None


@dataclass
class MemoryForge:
    """A forge client over dictionaries: what it was asked is in ``calls``; ``failures`` are
    raised, one per call, by the next calls whose method name matches (or any, for ``*``)."""

    kind: types.ForgeKind = "github"
    issues: dict[tuple[str, int], FakeIssue] = field(default_factory=dict)
    comments: dict[int, tuple[str, int, str, str]] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    writers: set[str] = field(default_factory=lambda: {"alice"})
    #: The combined status of a commit, by sha (none reported when missing).
    statuses: dict[str, types.CombinedStatus] = field(default_factory=dict)
    #: Branches on the forge besides those of pull requests (pushed by a person).
    branches: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    failures: list[tuple[str, Exception]] = field(default_factory=list)
    #: Method name -> raise :class:`Crash` right after that call's effect (a kill -9 there).
    crash_after: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def _call(self, name: str) -> None:
        self.calls.append(name)
        for index, (method, exc) in enumerate(self.failures):
            if method in (name, "*"):
                del self.failures[index]
                raise exc

    def _after(self, name: str) -> None:
        if name in self.crash_after:
            self.crash_after.discard(name)
            raise Crash(f"the control plane died right after {name}")

    def open_issue(
        self, number: int, title: str = "Fix the bug", body: str = "It breaks.", repo: str = REPO
    ) -> FakeIssue:
        issue = FakeIssue(title, body)
        self.issues[(repo, number)] = issue
        return issue

    def label(self, number: int, name: str = "agentfarm", *, by: str = "alice") -> None:
        issue = self.issues[(REPO, number)]
        if name not in issue.labels:
            issue.labels.append(name)
        issue.applied_by = by

    def unlabel(self, number: int, name: str = "agentfarm") -> None:
        issue = self.issues[(REPO, number)]
        issue.labels = [label for label in issue.labels if label != name]

    def comments_on(self, number: int, repo: str = REPO) -> list[str]:
        return [c[2] for c in self.comments.values() if c[:2] == (repo, number)]

    def count(self, name: str) -> int:
        return self.calls.count(name)

    def _issue(self, repo: str, number: int) -> types.Issue:
        issue = self.issues.get((repo, number))
        if issue is None:
            raise forge_errors.ForgeNotFoundError(f"GET issue {number} answered 404", status=404)
        return types.Issue(
            number,
            issue.title,
            issue.body,
            issue.state,
            tuple(issue.labels),
            "reporter",
            f"http://forge/{repo}/issues/{number}",
        )

    async def list_labeled_issues(self, repo: str, label: str) -> list[types.Issue]:
        self._call("list_labeled_issues")
        return [
            self._issue(r, n)
            for (r, n), i in self.issues.items()
            if r == repo and label in i.labels and i.state == "open"
        ]

    async def get_repo(self, repo: str) -> types.Repository:
        self._call("get_repo")
        return types.Repository(full_name=repo, default_branch="main")

    async def branch_exists(self, repo: str, branch: str) -> bool:
        self._call("branch_exists")
        return branch in self.branches or any(p["head"] == branch for p in self.pulls)

    async def get_issue(self, repo: str, number: int) -> types.Issue:
        self._call("get_issue")
        return self._issue(repo, number)

    async def list_comments(self, repo: str, number: int) -> list[types.Comment]:
        self._call("list_comments")
        return [
            types.Comment(cid, body, author, "", "")
            for cid, (r, n, body, author) in self.comments.items()
            if (r, n) == (repo, number)
        ]

    async def create_comment(self, repo: str, number: int, body: str) -> types.Comment:
        self._call("create_comment")
        cid = next(self._ids)
        self.comments[cid] = (repo, number, body, BOT)
        self._after("create_comment")
        return types.Comment(cid, body, BOT, "", "")

    async def edit_comment(self, repo: str, comment_id: int, body: str) -> types.Comment:
        self._call("edit_comment")
        if comment_id not in self.comments:
            raise forge_errors.ForgeNotFoundError("PATCH comment answered 404", status=404)
        r, n, _, author = self.comments[comment_id]
        self.comments[comment_id] = (r, n, body, author)
        self._after("edit_comment")
        return types.Comment(comment_id, body, author, "", "")

    async def add_labels(self, repo: str, number: int, names: Sequence[str]) -> None:
        self._call("add_labels")
        issue = self.issues[(repo, number)]
        issue.labels += [name for name in names if name not in issue.labels]
        self._after("add_labels")

    async def remove_label(self, repo: str, number: int, name: str) -> None:
        self._call("remove_label")
        issue = self.issues[(repo, number)]
        issue.labels = [label for label in issue.labels if label != name]

    async def find_open_pull(self, repo: str, head: str) -> types.PullRequest | None:
        self._call("find_open_pull")
        for pull in self.pulls:
            if pull["repo"] == repo and pull["head"] == head:
                return _pull(pull)
        return None

    async def open_pull(
        self, repo: str, *, title: str, head: str, base: str, body: str, draft: bool
    ) -> types.PullRequest:
        self._call("open_pull")
        pull = {
            "repo": repo,
            "number": next(self._ids),
            "title": title,
            "head": head,
            "base": base,
            "body": body,
            "draft": draft,
        }
        self.pulls.append(pull)
        self._after("open_pull")
        return _pull(pull)

    async def label_applied_by(self, repo: str, number: int, label: str) -> str | None:
        self._call("label_applied_by")
        return self.issues[(repo, number)].applied_by

    async def may_write(self, repo: str, user: str) -> bool:
        self._call("may_write")
        return user in self.writers

    async def combined_status(self, repo: str, ref: str) -> types.CombinedStatus:
        self._call("combined_status")
        return self.statuses.get(ref) or types.CombinedStatus(sha=ref, state="none", checks=())

    async def aclose(self) -> None:
        pass


def _pull(pull: dict[str, Any]) -> types.PullRequest:
    return types.PullRequest(
        pull["number"],
        f"http://forge/pull/{pull['number']}",
        pull["title"],
        pull["head"],
        HEAD_SHA,
        pull["base"],
        pull["draft"],
    )


def slow_script(run: models.Run, command: AgentCommand) -> list[Step]:
    """Starts, then stays busy for ten minutes unless stopped."""
    steps = fake.claude_like_script(run, command)[:2]
    return [*steps, Step("exit", exit=ExitInfo(exit_code=0), delay=600)]


@dataclass
class World:
    """A store, a fake backend, a forge: what outlives one pipeline object (a server start)."""

    tmp_path: Path
    store: Store
    backend: FakeBackend
    client: MemoryForge
    forge: domain.Forge
    made: list[tuple[Supervisor, Pipeline]] = field(default_factory=list)
    #: What each run's branch did, by run id, as the fake backend reports it at the end.
    outcomes: dict[str, BranchOutcome] = field(default_factory=dict)

    @property
    def pstore(self) -> PipelineStore:
        return PipelineStore(self.store.database)

    def settings(self) -> Settings:
        return make_settings(self.tmp_path / "data", public_url="https://farm.example")

    async def pipeline(self, clock: Callable[[], float] | None = None) -> Pipeline:
        """A new server start over the same store, forge and agents (not started: tests call
        ``tick`` to make one pass)."""
        settings = self.settings()
        secrets = SecretStore(settings.secrets_path)
        backend = self.backend.restarted() if self.made else self.backend
        sup = Supervisor(
            settings, self.store, secrets, {"local": backend}, {"claude": ClaudeAdapter()}
        )
        await sup.start()
        pipe = Pipeline(
            settings,
            self.store,
            self.pstore,
            secrets,
            sup,
            client_factory=lambda _forge: self.client,
        )
        if clock is not None:
            pipe.clock = clock
        self.made.append((sup, pipe))
        return pipe

    async def close(self) -> None:
        for sup, pipe in self.made:
            await pipe.close()
            await sup.close()
        self.made.clear()

    async def attempts(self, number: int | None = None) -> list[domain.Attempt]:
        return list(reversed(await self.pstore.list_attempts(repo=REPO, number=number)))

    async def run_ended(self, run_id: str) -> models.Run:
        await until(lambda: _terminal(self.store, run_id))
        return await self.store.get_run(run_id)

    async def finish_run(
        self,
        attempt: domain.Attempt,
        *,
        commits: int = 1,
        pushed: bool = True,
        error: str | None = None,
        exit_code: int = 0,
    ) -> models.Run:
        """End the attempt's (busy) agent with a successful answer, its branch reported as the
        backend's ``run.branch`` event says; returns the ended run."""
        assert attempt.run_id is not None
        # What the backend reports of the branch at the end (the run.branch event).
        self.outcomes[attempt.run_id] = BranchOutcome(
            branch=attempt.branch,
            start="a" * 40,
            head=HEAD_SHA,
            commits=commits,
            pushed=pushed,
            error=error,
        )
        await until(lambda: _started(self.backend, attempt.run_id or ""))
        state = self.backend.runs[attempt.run_id]
        if state.task is not None:
            state.task.cancel()
        run = await self.store.get_run(attempt.run_id)
        answer = fake.claude_like_script(run, None)[2:-1]  # type: ignore[arg-type]
        for step in answer if exit_code == 0 else []:  # a failing agent gives no answer
            state.append(step.kind, step.data)
        state.append("exit", exit=ExitInfo(exit_code=exit_code))
        return await self.run_ended(attempt.run_id)


def _started(backend: FakeBackend, run_id: str) -> Awaitable[bool]:
    async def check() -> bool:
        return run_id in backend.runs

    return check()


async def _terminal(store: Store, run_id: str) -> bool:
    return (await store.get_run(run_id)).status.terminal


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(GUARD):
        while not await check():
            await asyncio.sleep(0.01)


def home_forge() -> domain.Forge:
    """The forge "home" (GitHub, token secret FORGE_TOKEN) that serves REPO."""
    return domain.Forge(
        name="home",
        kind="github",
        base_url="https://api.github.com",
        token_secret="FORGE_TOKEN",
        repos=[REPO],
        webhook_secret_name=domain.webhook_secret_name("home"),
    )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await Store.open(tmp_path / "data" / "agentfarm.db")
    settings = make_settings(tmp_path / "data")
    settings.ensure_dirs()
    secrets = SecretStore(settings.secrets_path)
    secrets.set("FORGE_TOKEN", "forge-token-123")
    secrets.set(domain.webhook_secret_name("home"), SECRET)
    pstore = PipelineStore(store.database)
    forge = await pstore.create_forge(home_forge())
    await store.create_config(
        models.AgentConfig(name="issue-implementer", repo="unused", prompt="Standing orders.")
    )
    backend = FakeBackend(slow_script)
    w = World(tmp_path, store, backend, MemoryForge(), forge)
    backend.world.outcome = lambda run: w.outcomes.get(run.id)
    yield w
    await w.close()
    await backend.shutdown()
    await store.close()
