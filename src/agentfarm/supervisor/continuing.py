"""Continuing an ended run with a new prompt: a new agent process in the run's session,
workspace and branch, started the way a parked run resumes (``resuming``, ``parking``).

The run leaves its ended status for ``starting`` (the store allows that one step from
``succeeded``, ``failed`` or ``stopped`` with ``store.REOPEN``, once: a compare-and-set), its
end figures are cleared,
and the figures so far become the base the new process counts on (as at a park). Its stored
cursor goes back to 0: the new process's records start a new spool. At the new end the branch
goes home again, on top of what the first end brought.

On Kubernetes the run's pod has gone with its end: the backend continues it in a new pod on
the run's branch, with the agent's session (carried out of the old pod at the run's end) put
back in its HOME (``backends.base.ContinuesEnded``).

Not continued: a pipeline run (its pull request is where it is talked to), an agent or a
backend that cannot start a process in an existing session (Claude can), a run whose files
were removed (retention) or that never ran, and one its backend refuses with its reason (a
Kubernetes run whose session could not be carried out of its pod).
"""

from __future__ import annotations

from typing import Any

from agentfarm.domain import errors, models
from agentfarm.store import store
from agentfarm.supervisor import events, parking


def check(run: models.Run, *, can_continue: bool, refusal: str | None = None) -> None:
    """A ConflictError saying why ``run`` cannot be continued, if it cannot (``refusal``: its
    backend's reason, ``Parking.ended_refusal``)."""
    if run.origin == "pipeline":
        raise errors.ConflictError(
            f"run {run.id} is a pipeline run: continue it from its pull request (mention the "
            "bot there), not here"
        )
    if not can_continue or not run.session_id:
        raise errors.ConflictError(
            f"run {run.id} cannot be continued: the {run.spec.agent} agent on the "
            f"{run.spec.backend.type} backend cannot start a new process in its session "
            "(Claude can, on the local and Kubernetes backends); launch a new run instead"
        )
    if not run.workspace:
        raise errors.ConflictError(
            f"run {run.id} has no workspace any more (removed after AGENTFARM_RETENTION_HOURS, "
            "or it never started): launch a new run instead"
        )
    if refusal is not None:
        raise errors.ConflictError(f"run {run.id} cannot be continued: {refusal}")


def drafts(run: models.Run, prompt: str) -> list[models.EventDraft]:
    said = models.EventDraft(type=models.EventType.user_message, data={"text": prompt})
    status = events.status_event(
        models.RunStatus.starting, reason=parking.CONTINUED, previous=run.status.value
    )
    return [said, status]


def fields(run: models.Run) -> dict[str, Any]:
    base = run.continuation.model_copy(
        update={
            "reason": parking.CONTINUED,
            "base_cost_usd": run.cost_usd,
            "base_usage": run.usage,
            "base_num_turns": run.num_turns,
        }
    )
    return {
        "status": models.RunStatus.starting,
        "finished_at": None,
        "exit_code": None,
        "error": None,
        "parked_until": None,
        "continuation": base,
        store.REOPEN: True,
    }
