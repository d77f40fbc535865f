"""Follow-ups on the pull requests the pipeline opened: a review comment, or failing checks.

Decisions plus forge reads, nothing else: each function either returns a NEW attempt, already
recorded in the store (``pending``, kind ``review`` or ``checks``, on the pull request's branch
with ``branch == base_branch``, ``pr_number``/``pr_url`` set, ``parent_id`` the attempt it
follows), which the pipeline's state machine then runs like any other, or None, and logs why.
The store's one-active-attempt-per-issue rule is what keeps two follow-ups (or a follow-up and
a relabel) from running at once: a create that would clash is answered with None.

Level-triggered: a comment or a status delivery only says "look at this pull request"; its
open state and head come from the forge. A checks follow-up records the head it answers as its
``base_sha``, so a re-delivered status or the next poll never starts a second one for the same
commit, and at most ``forge.check_fix_attempts`` of them run per pull request in
``forge.check_fix_window_minutes``; the first refusal after that is said once on the issue.

The pipeline's own comments are told apart by their hidden ``<!-- agentfarm:`` marker, not by
login: the token is often a person's own, and that person's requests must still count.
Forge errors other than "may not write" are raised (a temporary one: ask again later; nothing
was recorded yet), except in :func:`poll_checks`, which logs them per pull request.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from datetime import timedelta

from agentfarm.domain import errors
from agentfarm.domain.models import utcnow
from agentfarm.domain.pipeline import Attempt, AttemptKind, AttemptState, Forge
from agentfarm.pipeline import mentions, status_comment, text
from agentfarm.pipeline.forges import errors as forge_errors
from agentfarm.pipeline.forges import types
from agentfarm.pipeline.forges.webhooks import Trigger
from agentfarm.store.pipeline import PipelineStore

log = logging.getLogger(__name__)

#: Comments the pipeline writes carry this (``<!-- agentfarm:attempt:<id> -->``); they are
#: never requests, whatever account the pipeline's token belongs to.
OWN_MARKER = "<!-- agentfarm:"
#: How many of the most recent attempts a poll (or a status for an unknown head) looks at.
MAX_CANDIDATES = 200
#: Pull requests asked about on the forge for a status whose sha no attempt recorded.
MAX_FORGE_LOOKUPS = 10
MAX_LISTED_CHECKS = 20
_SHA_RE = re.compile(r"^[0-9a-fA-F]{7,64}$")
_URL_RE = re.compile(r"^https?://[^\s<>\"'`]{1,2000}$")


async def followup_for_comment(
    pstore: PipelineStore, client: types.ForgeClient, forge: Forge, trigger: Trigger
) -> Attempt | None:
    """A review follow-up for a new pull-request comment that mentions ``forge.mention``,
    written by a user with write access, on a pull request the pipeline opened; else None."""
    if not asks(forge, trigger) or trigger.number is None:
        return None
    repo, pr_number, actor = trigger.repo, trigger.number, trigger.actor
    where = f"{forge.name}: {repo}#{pr_number}"
    request = text.clean(trigger.comment)
    if not actor or actor.lower().endswith("[bot]"):
        log.info("%s: a mention by %r, a bot or nobody, ignored", where, actor)
        return None
    thread = await pstore.attempts_for_pull(forge.id, repo, pr_number)
    latest = _latest(thread)
    if latest is None:
        log.info("%s: a mention on a pull request the pipeline did not open, ignored", where)
        return None
    if trigger.delivery_id and any(a.delivery_id == trigger.delivery_id for a in thread):
        return None  # started before a restart: a kept request is decided once
    if not await _may_write(client, repo, actor):
        log.info("%s: a mention by %r, who may not write to %s, ignored", where, actor, repo)
        return None
    pull = await _open_pull(client, latest)
    if pull is None:
        log.info("%s: a mention on a closed pull request, ignored", where)
        return None
    attempt = await _followup(
        pstore, latest, pull, kind=AttemptKind.review, request=request, actor=actor
    )
    attempt.delivery_id = trigger.delivery_id
    return await _create(pstore, attempt)


def asks(forge: Forge, trigger: Trigger) -> bool:
    """Whether ``trigger`` is a comment on a pull request of an allow-listed repository that
    mentions ``forge.mention`` in its prose (and is not one of the pipeline's own)."""
    if trigger.kind != "comment" or not trigger.is_pull or trigger.number is None:
        return False
    if trigger.repo not in forge.repos or OWN_MARKER in trigger.comment:
        return False
    return mentions.mentions(text.clean(trigger.comment), forge.mention)


async def followup_for_status(
    pstore: PipelineStore, client: types.ForgeClient, forge: Forge, repo: str, sha: str
) -> Attempt | None:
    """A checks follow-up when ``sha`` is the head of an open pull request whose latest
    attempt is done and whose checks have all finished, at least one failing; else None."""
    if repo not in forge.repos or not _SHA_RE.fullmatch(sha):
        return None
    sha = sha.lower()
    done = await _done_pulls(pstore, forge, repo)
    # The head an attempt recorded is the likely match; others (a person pushed to the
    # branch) are asked of the forge, the newest few only.
    ordered = [a for a in done if a.head_sha.lower() == sha]
    ordered += [a for a in done if a.head_sha.lower() != sha][:MAX_FORGE_LOOKUPS]
    for latest in ordered:
        pull = await _open_pull(client, latest)
        if pull is not None and pull.head_sha.lower() == sha:
            return await _check_pull(pstore, client, forge, latest, pull)
    return None


async def poll_checks(
    pstore: PipelineStore, client: types.ForgeClient, forge: Forge
) -> list[Attempt]:
    """The checks rule over every open pull request of the forge whose latest attempt is done
    (Forgejo sends no status webhook). A forge error on one pull request is logged and the
    others are still looked at."""
    made: list[Attempt] = []
    for latest in await _done_pulls(pstore, forge, None):
        try:
            pull = await _open_pull(client, latest)
            attempt = None
            if pull is not None:
                attempt = await _check_pull(pstore, client, forge, latest, pull)
        except forge_errors.ForgeError as exc:
            log.warning(
                "%s: %s#%s: checks not read: %s", forge.name, latest.repo, latest.pr_number, exc
            )
            continue
        if attempt is not None:
            made.append(attempt)
    return made


def _is_notice(attempt: Attempt) -> bool:
    """The record of "no more check fixes" said on the issue (not an attempt that ran)."""
    return attempt.kind == AttemptKind.checks and attempt.state == AttemptState.ignored


def _latest(thread: Sequence[Attempt]) -> Attempt | None:
    """The newest attempt of a pull request's thread (newest first) that worked on it."""
    return next((a for a in thread if a.branch and not _is_notice(a)), None)


async def _done_pulls(pstore: PipelineStore, forge: Forge, repo: str | None) -> list[Attempt]:
    """For each pull request among the recent attempts, its latest attempt, when that is done."""
    seen: set[tuple[str, int]] = set()
    done: list[Attempt] = []
    attempts = await pstore.list_attempts(forge_id=forge.id, repo=repo, limit=MAX_CANDIDATES)
    for attempt in attempts:  # newest first
        if attempt.pr_number is None or not attempt.branch or _is_notice(attempt):
            continue
        key = (attempt.repo, attempt.pr_number)
        if key in seen:
            continue
        seen.add(key)
        if attempt.state == AttemptState.done and attempt.repo in forge.repos:
            done.append(attempt)
    return done


async def _may_write(client: types.ForgeClient, repo: str, user: str) -> bool:
    """Fail closed: a forge that will not say is a no. A temporary failure is raised instead,
    so the caller asks again later rather than dropping a writer's request."""
    try:
        return await client.may_write(repo, user)
    except forge_errors.PermanentForgeError as exc:
        log.warning("%s: could not tell whether %r may write, taken as no: %s", repo, user, exc)
        return False


async def _open_pull(client: types.ForgeClient, latest: Attempt) -> types.PullRequest | None:
    pull = await client.find_open_pull(latest.repo, latest.branch)
    if pull is None or pull.number != latest.pr_number:
        return None
    return pull


async def _followup(
    pstore: PipelineStore,
    latest: Attempt,
    pull: types.PullRequest,
    *,
    kind: AttemptKind,
    request: str,
    actor: str = "",
    state: AttemptState = AttemptState.pending,
    reason: str = "",
) -> Attempt:
    return Attempt(
        forge_id=latest.forge_id,
        repo=latest.repo,
        number=latest.number,
        kind=kind,
        seq=await pstore.next_seq(latest.forge_id, latest.repo, latest.number),
        state=state,
        reason=reason,
        actor=actor,
        title=latest.title,
        request=request,
        branch=latest.branch,
        base_branch=latest.branch,
        clone_url=latest.clone_url,
        base_sha=pull.head_sha.lower(),
        pr_number=pull.number,
        pr_url=pull.url or latest.pr_url,
        parent_id=latest.id,
    )


async def _create(pstore: PipelineStore, attempt: Attempt) -> Attempt | None:
    try:
        return await pstore.create_attempt(attempt)
    except errors.ConflictError:
        log.info(
            "%s#%s: another attempt is active, the %s follow-up is not started",
            attempt.repo,
            attempt.number,
            attempt.kind.value,
        )
        return None


async def _check_pull(
    pstore: PipelineStore,
    client: types.ForgeClient,
    forge: Forge,
    latest: Attempt,
    pull: types.PullRequest,
) -> Attempt | None:
    sha = pull.head_sha.lower()
    if not _SHA_RE.fullmatch(sha) or forge.check_fix_attempts == 0:
        return None
    thread = await pstore.attempts_for_pull(forge.id, latest.repo, pull.number)
    checks = [a for a in thread if a.kind == AttemptKind.checks]
    if any(a.base_sha == sha and not _unsaid(a) for a in checks):
        return None  # this head was answered already (a re-delivered status, the next poll)
    status = await client.combined_status(latest.repo, sha)
    if status.state != "failure" or any(c.state == "pending" for c in status.checks):
        return None  # passing, or not finished: wait for the last check
    since = utcnow() - timedelta(minutes=forge.check_fix_window_minutes)
    recent = [a for a in checks if not _is_notice(a) and a.created_at >= since]
    if len(recent) >= forge.check_fix_attempts:
        await _say_limit(pstore, client, forge, latest, pull, thread, recent)
        return None
    request = _checks_request(pull, status)
    attempt = await _followup(pstore, latest, pull, kind=AttemptKind.checks, request=request)
    return await _create(pstore, attempt)


def _unsaid(attempt: Attempt) -> bool:
    """A notice recorded whose comment is not known to be posted yet."""
    return _is_notice(attempt) and attempt.comment_id is None


def _checks_request(pull: types.PullRequest, status: types.CombinedStatus) -> str:
    """The failing checks as the agent is told them; every part came from the forge, so each
    is cleaned and a link is kept only when it is a plain http(s) URL."""
    failing = status.failing
    lines = [f"The checks of pull request #{pull.number} fail on commit {pull.head_sha[:12]}:"]
    for check in failing[:MAX_LISTED_CHECKS]:
        line = f"- {text.one_line(check.name, 200) or '(unnamed check)'}"
        description = text.one_line(check.description, 500)
        if description:
            line += f": {description}"
        if _URL_RE.fullmatch(check.url):
            line += f" (details: {check.url})"
        lines.append(line)
    if len(failing) > MAX_LISTED_CHECKS:
        lines.append(f"- ... and {len(failing) - MAX_LISTED_CHECKS} more failing checks")
    return text.clean("\n".join(lines))


async def _say_limit(
    pstore: PipelineStore,
    client: types.ForgeClient,
    forge: Forge,
    latest: Attempt,
    pull: types.PullRequest,
    thread: Sequence[Attempt],
    recent: Sequence[Attempt],
) -> None:
    """Once per run of refusals: record the notice (an ``ignored`` checks attempt), then post
    it on the issue, found by its marker first after a crash. Its id is derived from the newest
    counted fix, so of racing deliveries (one per check that finishes) one records it and posts;
    the others find the id taken and leave it to that one."""
    newest = max(recent, key=lambda a: a.created_at)
    key = f"{forge.id}/{latest.repo}/{pull.number}/{newest.id}"
    notice_id = hashlib.sha256(key.encode()).hexdigest()[:12]
    notice = next((a for a in thread if a.id == notice_id), None)
    if notice is None:
        reason = (
            f"the checks still fail after {len(recent)} fix attempts in "
            f"{forge.check_fix_window_minutes} minutes; no more will be made for now"
        )
        made = await _followup(
            pstore,
            latest,
            pull,
            kind=AttemptKind.checks,
            request="",
            state=AttemptState.ignored,
            reason=reason,
        )
        made.id = notice_id
        try:
            notice = await pstore.create_attempt(made)
        except errors.ConflictError:
            return  # recorded by a racing delivery, which posts it
        log.info("%s#%s: %s", latest.repo, latest.number, reason)
    if notice.comment_id is not None:
        return
    marker = status_comment.marker(notice.id)
    comments = await client.list_comments(notice.repo, notice.number)
    posted = next((c for c in comments if status_comment.attempt_marker(c.body) == notice.id), None)
    if posted is None:
        body = (
            f"{marker}\n**agentfarm**: the checks of pull request #{pull.number} still fail "
            f"after {len(recent)} attempts to fix them in the last "
            f"{forge.check_fix_window_minutes} minutes, so no more will be made for now. "
            f"Push a fix to `{notice.branch}`, or comment `{forge.mention} <what to change>` "
            "on the pull request to ask for one."
        )
        posted = await client.create_comment(notice.repo, notice.number, body)
    notice.comment_id = posted.id
    await pstore.save_attempt(notice)
