"""What a finished run left behind, and what the pipeline makes of it.

The backend reports its branch in one ``run.branch`` event (``branch``, ``start``, ``head``,
``commits``, ``pushed``, ``error``); the agent's closing words are its ``agent.result``. Both
come from the agent's workspace and are treated as untrusted text: cleaned and cut short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentfarm.domain import models
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import text
from agentfarm.store import Store

BRANCH_EVENT = "run.branch"
RESULT_EVENT = models.EventType.agent_result.value
#: How much of the agent's own summary goes into a comment or a pull request.
SUMMARY_LIMIT = 3000
_PAGE = 1000


@dataclass(frozen=True)
class RunOutcome:
    run: models.Run
    #: The backend's ``run.branch`` report; None when it sent none.
    branch: dict[str, Any] | None
    #: The agent's closing message, cleaned.
    summary: str

    @property
    def commits(self) -> int:
        value = (self.branch or {}).get("commits")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def pushed(self) -> bool:
        return bool((self.branch or {}).get("pushed")) and self.commits > 0

    @property
    def head(self) -> str:
        return str((self.branch or {}).get("head") or "")[:64]

    @property
    def push_error(self) -> str:
        return text.clean(str((self.branch or {}).get("error") or ""), limit=500)


async def read_outcome(store: Store, run: models.Run) -> RunOutcome:
    branch: dict[str, Any] | None = None
    summary = ""
    after = 0
    while True:
        page = await store.list_events(run.id, after=after, limit=_PAGE)
        for event in page:
            if event.type == BRANCH_EVENT:
                branch = event.data
            elif event.type == RESULT_EVENT and isinstance(event.data.get("result"), str):
                summary = event.data["result"]
        if len(page) < _PAGE:
            break
        after = page[-1].seq
    return RunOutcome(run, branch, text.clean(summary, limit=SUMMARY_LIMIT))


def failure(attempt: domain.Attempt, outcome: RunOutcome) -> str | None:
    """Why the attempt failed, for the issue; None when its branch is ready for a pull request."""
    run = outcome.run
    said = f"\n\nThe agent said:\n\n> {_quote(outcome.summary)}" if outcome.summary else ""
    if outcome.branch is None:
        why = f": {_one_line(run.error)}" if run.error else ""
        return (
            f"The run ended {run.status.value}{why}, without reporting its branch "
            f"`{attempt.branch}`, so nothing was pushed. Look at the run in the cockpit, fix "
            "what it says, then retry the attempt." + said
        )
    if outcome.commits == 0:
        ended = (
            ""
            if run.status == models.RunStatus.succeeded
            else (
                f" The run ended {run.status.value}: {_one_line(run.error or 'no reason given')}."
            )
        )
        return (
            "The agent made no commits, so there is no pull request."
            + ended
            + " Clarify the issue (or the standing instructions), then label it again or retry."
            + said
        )
    if not outcome.pushed:
        return (
            f"Pushing branch `{attempt.branch}` ({outcome.commits} commit(s)) was rejected: "
            f"{outcome.push_error or 'git gave no reason'}. Check that the forge token may push "
            "to the repository (contents: write) and that no branch protection rule forbids "
            "the branch, then retry; the run's workspace keeps the commits until it is deleted."
            + said
        )
    if run.status != models.RunStatus.succeeded:
        return (
            f"The run ended {run.status.value}: {_one_line(run.error or 'no reason given')}. "
            f"Its {outcome.commits} commit(s) are pushed on branch `{attempt.branch}`, so no "
            "work is lost: continue from there or retry." + said
        )
    return None


def pull_title(attempt: domain.Attempt) -> str:
    title = _one_line(attempt.title) or f"Issue #{attempt.number}"
    return title[:250]


def pull_body(
    attempt: domain.Attempt, forge: domain.Forge, outcome: RunOutcome, run_url: str | None
) -> str:
    parts = []
    if forge.closes_issue and attempt.kind == domain.AttemptKind.issue:
        parts.append(f"Closes #{attempt.number}")
    else:
        parts.append(f"For #{attempt.number}")
    if outcome.summary:
        parts.append("The agent's summary:\n\n> " + _quote(outcome.summary))
    facts = []
    if outcome.run.cost_usd is not None:
        facts.append(f"cost ${outcome.run.cost_usd:.2f}")
    if outcome.run.num_turns is not None:
        facts.append(f"{outcome.run.num_turns} turns")
    facts.append(f"run [{outcome.run.id}]({run_url})" if run_url else f"run {outcome.run.id}")
    parts.append("---\nagentfarm: " + ", ".join(facts))
    return "\n\n".join(parts)


def _quote(value: str) -> str:
    return value.strip().replace("\n", "\n> ")


def _one_line(value: str) -> str:
    return " ".join(text.clean(value, limit=500).split())
