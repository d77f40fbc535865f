"""Talking to a running agent: a follow-up message, an interrupt of its running turn.

Both go to the agent's stdin through its backend (the local monitor's control socket, an exec
into the pod on Kubernetes), in the agent's own format (the command's ``followup`` and
``interrupt``). Whoever owns the agent's stdin there decides whether it can take them now: a
turn pending or a follow-up window open for a message; a turn running for an interrupt. What
it refuses, or an agent that takes no follow-ups at all, is a 409 saying why and what to do.
"""

from __future__ import annotations

from agentfarm.backends.base import RunHandle
from agentfarm.domain import errors, launch, models


def check_live(
    run: models.Run, handle: RunHandle | None, command: launch.AgentCommand | None, what: str
) -> tuple[RunHandle, launch.AgentCommand]:
    """The run's handle and command, or a ConflictError saying why it cannot ``what``."""
    if run.status.terminal:
        raise errors.ConflictError(
            f"run {run.id} has ended ({run.status.value}); it cannot {what}: continue it with a "
            f'new prompt (`agentfarm resume {run.id} "..."`) or launch a new run'
        )
    if handle is None or command is None:
        raise errors.ConflictError(
            f"run {run.id} is {run.status.value}, its agent is not running yet; it cannot "
            f"{what} now: try again once it runs"
        )
    return handle, command


async def send(
    run: models.Run, handle: RunHandle, command: launch.AgentCommand, text: str
) -> models.EventDraft:
    if command.followup is None:
        raise errors.ConflictError(
            f"the {run.spec.agent} agent takes no follow-up messages (it reads its prompt once): "
            "launch a new run with the new prompt instead"
        )
    try:
        await handle.send(command.followup.encode(text))
    except errors.BackendError as exc:
        raise errors.ConflictError(f"the message was not delivered: {exc}") from None
    return models.EventDraft(type=models.EventType.user_message, data={"text": text})


async def interrupt(
    run: models.Run, handle: RunHandle, command: launch.AgentCommand
) -> models.EventDraft:
    if command.followup is None or not command.interrupt:
        raise errors.ConflictError(
            f"the {run.spec.agent} agent cannot be interrupted without ending the run: stop it "
            f"instead (`agentfarm stop {run.id}`)"
        )
    try:
        await handle.interrupt()
    except errors.BackendError as exc:
        raise errors.ConflictError(f"nothing was interrupted: {exc}") from None
    return models.EventDraft(type=models.EventType.user_interrupt, data={})
