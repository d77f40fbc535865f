"""What an attempt's run is given: its branch (never one used before), its spec from the
forge's config, and the forge's URLs."""

from __future__ import annotations

from typing import Any

from agentfarm.domain import errors, models
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import branches, prompt
from agentfarm.pipeline.forges import types
from agentfarm.store.pipeline import PipelineStore

#: Names tried against the forge before giving up (each one found there is skipped).
MAX_REMOTE_TRIES = 20


def spec(
    forge: domain.Forge, attempt: domain.Attempt, config: models.AgentConfig
) -> models.AgentSpec:
    """The config's spec on the issue's repository: its prompt, as standing instructions, is
    followed by the issue (or the follow-up's request) clearly delimited."""
    base = config.spec()
    instructions = base.prompt or prompt.DEFAULT_INSTRUCTIONS
    if attempt.kind == domain.AttemptKind.issue:
        task = prompt.issue_prompt(
            instructions,
            repo=attempt.repo,
            number=attempt.number,
            title=attempt.title,
            body=attempt.body,
            url=f"{web_root(forge)}/{attempt.repo}/issues/{attempt.number}",
        )
    else:
        task = prompt.followup_prompt(
            instructions,
            repo=attempt.repo,
            number=attempt.number,
            pr_number=attempt.pr_number or attempt.number,
            kind=attempt.kind,
            request=attempt.request,
        )
    update: dict[str, Any] = {
        "repo": attempt.clone_url or clone_url(forge, attempt.repo),
        "base_branch": attempt.base_branch,
        "prompt": task,
        "git_token_secret": forge.token_secret,
    }
    return models.AgentSpec.model_validate(base.model_dump() | update)


def web_root(forge: domain.Forge) -> str:
    """Where people (and git) reach the forge: the API root's origin; github.com for the
    public GitHub API."""
    host = forge.git_host
    return "https://github.com" if host == "https://api.github.com" else host


def clone_url(forge: domain.Forge, repo: str) -> str:
    return f"{web_root(forge)}/{repo}.git"


async def new_branch(
    pstore: PipelineStore, client: types.ForgeClient, forge: domain.Forge, attempt: domain.Attempt
) -> str:
    """``agentfarm/issue-<n>-<slug>`` with the first suffix no attempt has used and the
    repository does not have (a branch a person pushed, or one from a wiped database)."""
    attempts = await pstore.list_attempts(forge_id=forge.id, repo=attempt.repo, limit=10_000)
    used = {a.branch for a in attempts if a.branch}
    for _ in range(MAX_REMOTE_TRIES):
        name = branches.issue_branch(attempt.number, attempt.title, lambda n: n in used)
        if not await client.branch_exists(attempt.repo, name):
            return name
        used.add(name)
    raise errors.ConflictError(
        f"{MAX_REMOTE_TRIES} branch names for issue #{attempt.number} already exist in "
        f"{attempt.repo}: delete old agentfarm branches there, then retry"
    )
