"""What an attempt's run is given: its spec from the forge's config, and the forge's URLs."""

from __future__ import annotations

from typing import Any

from agentfarm.domain import models
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import prompt


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
    }
    if "git_token_secret" in models.AgentSpec.model_fields:
        update["git_token_secret"] = forge.token_secret
    return models.AgentSpec.model_validate(base.model_dump() | update)


def web_root(forge: domain.Forge) -> str:
    """Where people (and git) reach the forge: the API root's origin; github.com for the
    public GitHub API."""
    host = forge.git_host
    return "https://github.com" if host == "https://api.github.com" else host


def clone_url(forge: domain.Forge, repo: str) -> str:
    return f"{web_root(forge)}/{repo}.git"
