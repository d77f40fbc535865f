"""Reporting back on the issue: the attempt's one status comment and the state labels.

Both are idempotent, so a restart anywhere repeats them harmlessly: the comment is found by
the attempt's hidden marker before one is created (a crash between creating it and recording
its id never makes a second one), and labels are sets.
"""

from __future__ import annotations

from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import status_comment
from agentfarm.pipeline.forges import errors, types
from agentfarm.settings import Settings


def run_url(settings: Settings, run_id: str | None) -> str | None:
    """The run's page in the cockpit, when the server knows its public address."""
    if not run_id or not settings.public_url:
        return None
    return f"{settings.public_url.rstrip('/')}/runs/{run_id}"


async def find_comment(client: types.ForgeClient, attempt: domain.Attempt) -> int | None:
    """The id of the status comment this attempt already posted, if any."""
    for comment in await client.list_comments(attempt.repo, attempt.number):
        if status_comment.attempt_marker(comment.body) == attempt.id:
            return comment.id
    return None


async def post_status(
    client: types.ForgeClient,
    forge: domain.Forge,
    attempt: domain.Attempt,
    settings: Settings,
    *,
    shown: domain.AttemptState | None = None,
    cost_usd: float | None = None,
) -> int:
    """Create or edit the attempt's status comment (rendered as in state ``shown``, default
    its own); returns the comment's id for the caller to record."""
    view = attempt if shown is None else attempt.model_copy(update={"state": shown})
    body = status_comment.render(
        view,
        run_url=run_url(settings, attempt.run_id),
        cost_usd=cost_usd,
        label=forge.label,
        mention=forge.mention,
    )
    comment_id = attempt.comment_id
    if comment_id is None:
        comment_id = await find_comment(client, attempt)
    if comment_id is not None:
        try:
            await client.edit_comment(attempt.repo, comment_id, body)
            return comment_id
        except errors.ForgeNotFoundError:
            pass  # someone deleted it: post it again rather than fail the attempt
    return (await client.create_comment(attempt.repo, attempt.number, body)).id


async def set_state_label(
    client: types.ForgeClient,
    forge: domain.Forge,
    attempt: domain.Attempt,
    state: domain.AttemptState | None,
) -> None:
    """Show ``state`` with its label (in progress for an active one, done, failed) and take
    the others off; a stopped or ignored attempt keeps none of them."""
    labels = forge.state_labels
    wanted: str | None
    if state is None or not state.terminal:
        wanted = labels.in_progress
    elif state == domain.AttemptState.done:
        wanted = labels.done
    elif state == domain.AttemptState.failed:
        wanted = labels.failed
    else:
        wanted = None
    if wanted is not None:
        await client.add_labels(attempt.repo, attempt.number, [wanted])
    for name in (labels.in_progress, labels.done, labels.failed):
        if name != wanted:
            await client.remove_label(attempt.repo, attempt.number, name)
