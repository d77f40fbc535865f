"""Runs on a forge's repository through the supervisor and the real local backend (bubblewrap,
real git over HTTP to the fake forge, which checks the token on every request), with a
command agent as the agent: the named branch, the token that only git sees, the push only
with commits, the push rejected, and a follow-up that continues the branch."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfarm.agents.command import CommandAdapter
from agentfarm.backends.local.backend import LocalBackend
from agentfarm.domain import models
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor.runs import Supervisor
from tests.fakes.forge import FakeForge
from tests.realparts import missing
from tests.unit.forge_helpers import push_branch

pytestmark = pytest.mark.integration

REPO = "alice/proj"
GUARD = 120  # hang guard only
#: Commits its prompt as a line of work.txt; "nothing" commits nothing; "wait" first waits
#: for a file `go` in the workspace (so a test can act between the clone and the push).
#: It writes its environment to env.txt (not committed) for the test to read.
AGENT = """#!/bin/sh
set -e
env > env.txt
read -r prompt
if [ "$prompt" = wait ]; then
  while [ ! -e go ]; do sleep 0.05; done
fi
[ "$prompt" = nothing ] && { echo "nothing to do"; exit 0; }
echo "$prompt" >> work.txt
git add work.txt
git -c user.name=agent -c user.email=agent@example.invalid commit -qm "$prompt"
echo "committed: $prompt"
"""


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[FakeForge]:
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    with FakeForge(tmp_path / "forge", kind="forgejo") as fake:
        fake.create_repo(REPO)
        yield fake


@pytest.fixture
def agent(tmp_path: Path) -> str:
    bindir = tmp_path / "agents"
    bindir.mkdir()
    bindir.chmod(0o755)
    path = bindir / "agent.sh"
    path.write_text(AGENT)
    path.chmod(0o755)
    return str(path)


class Farm:
    def __init__(self, settings: Settings, store: Store, sup: Supervisor, agent: str) -> None:
        self.settings, self.store, self.sup, self.agent = settings, store, sup, agent

    async def restart(self) -> None:
        """The control plane goes away and comes back (the agents keep running)."""
        await self.sup.close()
        self.sup = supervisor(self.settings, self.store)
        await self.sup.start()

    async def running(self, run_id: str) -> None:
        async with asyncio.timeout(GUARD):
            while (await self.store.get_run(run_id)).status is not models.RunStatus.running:
                await asyncio.sleep(0.05)

    async def run(
        self, forge: FakeForge, prompt: str, branch: str, base: str | None = None
    ) -> models.Run:
        spec = models.AgentSpec(
            agent="command",
            command=models.CommandSpec(argv=[self.agent], prompt="stdin"),
            repo=forge.git_url(REPO),
            base_branch=base,
            prompt=prompt,
            git_token_secret="FORGE_BOT",
        )
        return await self.sup.submit(spec, branch=branch)

    async def ended(self, run_id: str) -> models.Run:
        async with asyncio.timeout(GUARD):
            while not (run := await self.store.get_run(run_id)).status.terminal:
                await asyncio.sleep(0.05)
        return run

    async def branch_event(self, run_id: str) -> dict[str, Any]:
        events = await self.store.list_events(run_id)
        found = [e.data for e in events if e.type == models.EventType.run_branch]
        assert len(found) == 1, [(e.type, e.data) for e in events]
        return found[0]

    async def events_text(self, run_id: str) -> str:
        return json.dumps([e.model_dump(mode="json") for e in await self.store.list_events(run_id)])

    def workspace(self, run_id: str) -> Path:
        return self.settings.runs_dir / run_id / "workspace"


def supervisor(settings: Settings, store: Store) -> Supervisor:
    secrets = SecretStore(settings.secrets_path)
    backends = {"local": LocalBackend(settings)}
    return Supervisor(settings, store, secrets, backends, {"command": CommandAdapter()})


@pytest.fixture
async def farm(tmp_path: Path, forge: FakeForge, agent: str) -> AsyncIterator[Farm]:
    settings = Settings(data_dir=tmp_path / "data", stop_grace_seconds=3)
    settings.ensure_dirs()
    SecretStore(settings.secrets_path).set("FORGE_BOT", forge.token)
    store = await Store.open(settings.data_dir / "agentfarm.db")
    farm = Farm(settings, store, supervisor(settings, store), agent)
    await farm.sup.start()
    try:
        yield farm
    finally:
        await farm.sup.close()
        await store.close()


def basic(user: str, token: str) -> str:
    return base64.b64encode(f"{user}:{token}".encode()).decode()


async def test_a_run_clones_with_the_token_and_pushes_its_named_branch(
    farm: Farm, forge: FakeForge
) -> None:
    main = forge.branch_sha(REPO, "refs/heads/main")
    run = await farm.run(forge, "fix the bug", "agentfarm/issue-7-fix-the-bug")
    done = await farm.ended(run.id)
    assert done.status is models.RunStatus.succeeded, done.error
    assert done.branch == "agentfarm/issue-7-fix-the-bug"
    outcome = await farm.branch_event(run.id)
    head = forge.branch_sha(REPO, "refs/heads/agentfarm/issue-7-fix-the-bug")
    assert outcome == {
        "branch": "agentfarm/issue-7-fix-the-bug",
        "start": main,
        "head": head,
        "commits": 1,
        "pushed": True,
        "error": None,
    }
    # Every git request (clone and push) carried the token, and only git had it.
    git_requests = [r for r in forge.requests if ".git/" in r.path]
    assert git_requests and all(r.auth == "Basic" and r.authorized for r in git_requests)
    assert any("git-receive-pack" in r.path for r in git_requests)
    secret_forms = (forge.token, basic("oauth2", forge.token))
    workspace = farm.workspace(run.id)
    git_config = (workspace / ".git" / "config").read_text()
    sandbox_env = (workspace / "env.txt").read_text()
    events = await farm.events_text(run.id)
    for value in secret_forms:
        assert value not in git_config
        assert value not in sandbox_env
        assert value not in events
    assert "GIT_CONFIG" not in sandbox_env


async def test_a_run_without_commits_pushes_nothing_and_says_so(
    farm: Farm, forge: FakeForge
) -> None:
    run = await farm.run(forge, "nothing", "agentfarm/issue-8-nothing")
    done = await farm.ended(run.id)
    assert done.status is models.RunStatus.succeeded, done.error
    main = forge.branch_sha(REPO, "refs/heads/main")
    assert await farm.branch_event(run.id) == {
        "branch": "agentfarm/issue-8-nothing",
        "start": main,
        "head": main,
        "commits": 0,
        "pushed": False,
        "error": None,
    }
    assert forge.branch_sha(REPO, "refs/heads/agentfarm/issue-8-nothing") is None
    assert not any("git-receive-pack" in r.path for r in forge.requests)


async def test_a_push_rejected_as_not_fast_forward_says_gits_reason(
    farm: Farm, forge: FakeForge, tmp_path: Path
) -> None:
    # Someone else's work is on the branch already: the run's push must not replace it.
    theirs = push_branch(forge, tmp_path, "agentfarm/issue-9-taken", "theirs\n")
    run = await farm.run(forge, "mine", "agentfarm/issue-9-taken")
    done = await farm.ended(run.id)
    assert done.status is models.RunStatus.succeeded, done.error
    outcome = await farm.branch_event(run.id)
    assert outcome["pushed"] is False and outcome["commits"] == 1
    assert "[rejected]" in outcome["error"] and "(non-fast-forward)" in outcome["error"]
    assert "hint:" not in outcome["error"]  # git's reason, not its advice
    assert forge.branch_sha(REPO, "refs/heads/agentfarm/issue-9-taken") == theirs


async def test_a_token_revoked_before_the_push_fails_the_push_with_gits_words(
    farm: Farm, forge: FakeForge
) -> None:
    run = await farm.run(forge, "wait", "agentfarm/issue-10-revoked")
    await farm.running(run.id)  # cloned (with the token)
    old = forge.token
    forge.token = "rotated-token-9876543210fedcba"
    (farm.workspace(run.id) / "go").write_text("")
    done = await farm.ended(run.id)
    assert done.status is models.RunStatus.succeeded, done.error
    outcome = await farm.branch_event(run.id)
    assert outcome["pushed"] is False and outcome["commits"] == 1
    assert outcome["error"].startswith("git push failed: ")
    assert "the server refused the run's git token" in outcome["error"]
    assert old not in outcome["error"] and basic("oauth2", old) not in outcome["error"]
    assert forge.branch_sha(REPO, "refs/heads/agentfarm/issue-10-revoked") is None


async def test_a_follow_up_continues_the_branch_on_top_of_its_head(
    farm: Farm, forge: FakeForge
) -> None:
    branch = "agentfarm/issue-11-iterate"
    first = await farm.run(forge, "first step", branch)
    assert (await farm.ended(first.id)).status is models.RunStatus.succeeded
    before = forge.branch_sha(REPO, f"refs/heads/{branch}")
    follow = await farm.run(forge, "second step", branch, base=branch)
    done = await farm.ended(follow.id)
    assert done.status is models.RunStatus.succeeded, done.error
    outcome = await farm.branch_event(follow.id)
    after = forge.branch_sha(REPO, f"refs/heads/{branch}")
    assert outcome == {
        "branch": branch,
        "start": before,
        "head": after,
        "commits": 1,
        "pushed": True,
        "error": None,
    }
    assert forge.branch_sha(REPO, f"refs/heads/{branch}~1") == before
    assert (farm.workspace(follow.id) / "work.txt").read_text() == "first step\nsecond step\n"


async def test_after_a_restart_the_push_resolves_the_token_again(
    farm: Farm, forge: FakeForge
) -> None:
    run = await farm.run(forge, "wait", "agentfarm/issue-12-restarted")
    await farm.running(run.id)
    await farm.restart()  # the new control plane reattaches the run, token and all
    (farm.workspace(run.id) / "go").write_text("")
    done = await farm.ended(run.id)
    assert done.status is models.RunStatus.succeeded, done.error
    outcome = await farm.branch_event(run.id)
    assert outcome["pushed"] is True and outcome["commits"] == 1, outcome
    assert forge.branch_sha(REPO, "refs/heads/agentfarm/issue-12-restarted") == outcome["head"]
    assert done.branch == "agentfarm/issue-12-restarted"


async def test_a_token_the_forge_refuses_at_the_clone_fails_the_run_saying_so(
    farm: Farm, forge: FakeForge
) -> None:
    SecretStore(farm.settings.secrets_path).set("FORGE_BOT", "stale-token-0123456789abcdef")
    run = await farm.run(forge, "fix it", "agentfarm/issue-13-stale")
    done = await farm.ended(run.id)
    assert done.status is models.RunStatus.failed
    assert done.error is not None
    assert done.error.startswith("git clone failed: the server refused the run's git token")
    assert "stale-token-0123456789abcdef" not in await farm.events_text(run.id)
    assert forge.branch_sha(REPO, "refs/heads/agentfarm/issue-13-stale") is None
