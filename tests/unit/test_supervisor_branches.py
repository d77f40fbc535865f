"""Named branches through the supervisor (on the fake backend): ``submit(branch=...)`` is
validated and reaches the backend, a spec's ``git_token_secret`` becomes the launch's git
token (never the agent's), and the backend's branch outcome becomes one ``run.branch``
event."""

from __future__ import annotations

import json
from collections.abc import Callable

import pydantic
import pytest

from agentfarm.backends.base import BranchOutcome
from agentfarm.backends.fake import FakeBackend
from agentfarm.domain import errors, launch, models
from agentfarm.domain.pipeline import webhook_secret_name
from agentfarm.store import Store
from agentfarm.supervisor.runs import Supervisor
from tests.unit.supervisor_kit import ended

REPO = "http://127.0.0.1:3000/alice/proj.git"
TOKEN = "forge-token-0123456789abcdef"


@pytest.fixture
def sup(supervisors: Callable[..., Supervisor]) -> Supervisor:
    supervisor = supervisors()
    supervisor.secrets.set("FORGE_BOT", TOKEN)
    return supervisor


def spec(**extra: object) -> models.AgentSpec:
    return models.AgentSpec.model_validate({"repo": REPO, "prompt": "fix it", **extra})


@pytest.mark.parametrize(
    "branch",
    ["-f", "a..b", "has space", "a~1", "x:y", "ends/", "x.lock", ".hidden", "a//b", "HEAD", ""],
)
async def test_a_branch_git_would_refuse_or_misread_is_refused_at_submit(
    sup: Supervisor, store: Store, branch: str
) -> None:
    with pytest.raises(errors.InvalidInputError, match="is not a branch name git takes"):
        await sup.submit(spec(), branch=branch)
    assert await store.list_runs() == []


async def test_a_named_branch_reaches_the_backend_and_the_run(
    sup: Supervisor, store: Store, backend: FakeBackend
) -> None:
    run = await sup.submit(spec(), branch="agentfarm/issue-12-fix-the-thing")
    assert run.branch == "agentfarm/issue-12-fix-the-thing"
    await sup.start()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.succeeded
    assert done.branch == "agentfarm/issue-12-fix-the-thing"
    assert backend.world.launches[run.id].branch == "agentfarm/issue-12-fix-the-thing"
    unnamed = await sup.submit(spec())
    assert unnamed.branch == launch.branch_name(unnamed.id)


async def test_git_token_secret_becomes_the_launchs_git_token_not_the_agents(
    sup: Supervisor, store: Store, backend: FakeBackend
) -> None:
    run = await sup.submit(spec(git_token_secret="FORGE_BOT"), branch="agentfarm/issue-1-x")
    await sup.start()
    await ended(store, run.id)
    launched = backend.world.launches[run.id]
    assert launched.git_auth is not None
    assert launched.git_auth.token == TOKEN
    assert launched.git_auth.prefix == "http://127.0.0.1:3000/"
    assert TOKEN not in launched.credentials.values()
    assert TOKEN not in json.dumps(launched.to_json())  # what the local monitor reads
    assert TOKEN not in repr(launched)


async def test_a_missing_git_token_secret_fails_the_submit_clearly(
    sup: Supervisor, store: Store
) -> None:
    with pytest.raises(errors.ConfigurationError, match="agentfarm secret set NO_SUCH"):
        await sup.submit(spec(git_token_secret="NO_SUCH"))
    assert await store.list_runs() == []


def test_git_token_secret_is_a_secret_name_for_an_http_repository() -> None:
    with pytest.raises(pydantic.ValidationError, match="https:// or http://"):
        spec(repo="/srv/repo", git_token_secret="FORGE_BOT")
    with pytest.raises(pydantic.ValidationError, match="git_token_secret"):
        spec(git_token_secret="not a name")
    assert spec(git_token_secret="FORGE_BOT").git_token_secret == "FORGE_BOT"
    # It is sent to the repository's host: never the model's key nor a webhook's secret.
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", webhook_secret_name("gh")):
        with pytest.raises(pydantic.ValidationError, match="which is not a git token"):
            spec(git_token_secret=name)


async def test_the_backends_branch_outcome_is_one_run_branch_event_before_the_end(
    sup: Supervisor, store: Store, backend: FakeBackend
) -> None:
    def outcome(run: models.Run) -> BranchOutcome:
        assert run.branch is not None
        return BranchOutcome(run.branch, "a" * 40, None, 2, False, f"rejected {TOKEN}")

    backend.world.outcome = outcome
    run = await sup.submit(spec(git_token_secret="FORGE_BOT"), branch="agentfarm/issue-2-y")
    await sup.start()
    await ended(store, run.id)
    events = await store.list_events(run.id)
    branch_events = [e for e in events if e.type == models.EventType.run_branch]
    assert [e.data for e in branch_events] == [
        {
            "branch": "agentfarm/issue-2-y",
            "start": "a" * 40,
            "head": None,
            "commits": 2,
            "pushed": False,
            "error": "rejected [redacted:FORGE_BOT]",
        }
    ]
    assert events[-1].type == models.EventType.run_status  # the final status comes after
    assert branch_events[0].seq < events[-1].seq
