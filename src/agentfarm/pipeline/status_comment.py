"""The status comment: one per attempt, posted when it is queued and edited in place.

Pure. The comment starts with a hidden marker naming its attempt, so that after a restart the
pipeline finds the comment it already posted instead of posting another. Text that came from
the forge or from a run (a reason mentioning a login, a forge's error message) is escaped so
that it cannot add links, mentions, references, HTML or a second marker.
"""

from __future__ import annotations

import re

from agentfarm.domain.pipeline import Attempt, AttemptKind, AttemptState
from agentfarm.pipeline import text

#: Keys of ``Attempt.steps`` (set, with a timestamp, when the step is done).
STEP_QUEUED = "queued"
STEP_RUNNING = "running"
STEP_PUSHED = "pushed"
STEP_PULL_REQUEST = "pull_request"

_ID = re.compile(r"[0-9a-f]{12}")
_MARKER = re.compile(r"\A<!-- agentfarm:attempt:([0-9a-f]{12}) -->(?:\r?\n|\Z)")
_URL = re.compile(r"https?://[^\s<>\"'`()\[\]\\]{1,2000}")
# Words GitHub or Forgejo would turn into a mention, a reference or a link.
_LINKY = re.compile(r"[@#`]|://|^www\.", re.IGNORECASE)
_MARKDOWN = re.compile(r"([\\`*_\[\]()!|~<>&#+$-])")
_AFTER_RUN = frozenset(
    {
        AttemptState.finishing,
        AttemptState.opening_pr,
        AttemptState.done,
        AttemptState.failed,
        AttemptState.stopped,
    }
)


def marker(attempt_id: str) -> str:
    """The hidden first line of an attempt's status comment."""
    if not _ID.fullmatch(attempt_id):
        raise ValueError(f"{attempt_id!r} is not an attempt id (12 hex digits)")
    return f"<!-- agentfarm:attempt:{attempt_id} -->"


def attempt_marker(body: str) -> str | None:
    """The attempt id of a status comment (its first line is exactly the marker), or None."""
    match = _MARKER.match(body)
    return match.group(1) if match else None


def render(
    attempt: Attempt,
    *,
    run_url: str | None,
    cost_usd: float | None = None,
    label: str | None = None,
    mention: str | None = None,
) -> str:
    """The status comment's Markdown for ``attempt`` as it stands now. ``label`` (the trigger
    label) and ``mention`` (the follow-up mention) make the retry advice precise."""
    follow_up = attempt.kind != AttemptKind.issue
    lines = [marker(attempt.id), f"### {_heading(attempt)}", ""]
    if attempt.state == AttemptState.ignored:  # nothing was queued: only say why
        return "\n".join([*lines, _footer(attempt, label, mention)]) + "\n"
    lines.append(_item(True, "Queued"))
    lines.append(_item(_ran(attempt), _run_line(attempt, run_url)))
    branch = f" {_code(attempt.branch)}" if attempt.branch else ""
    pushed = STEP_PUSHED in attempt.steps or attempt.state in {
        AttemptState.opening_pr,
        AttemptState.done,
    }
    lines.append(_item(pushed, f"Branch{branch} pushed"))
    lines.append(_item(_pull_request_done(attempt), _pull_request_line(attempt, follow_up)))
    footer = _footer(attempt, label, mention)
    if footer:
        lines += ["", footer]
    if cost_usd is not None and cost_usd >= 0:
        lines += ["", f"Cost: ${cost_usd:.2f}"]
    return "\n".join(lines) + "\n"


def _heading(attempt: Attempt) -> str:
    if attempt.kind == AttemptKind.review:
        return "agentfarm: follow-up on the pull request (review comment)"
    if attempt.kind == AttemptKind.checks:
        return "agentfarm: follow-up on the pull request (failing checks)"
    return f"agentfarm: attempt {attempt.seq} at this issue"


def _item(done: bool, label: str) -> str:
    return f"- [{'x' if done else ' '}] {label}"


def _ran(attempt: Attempt) -> bool:
    return STEP_RUNNING in attempt.steps or attempt.run_id is not None


def _run_line(attempt: Attempt, run_url: str | None) -> str:
    if not _ran(attempt):
        return "Agent run"
    line = "Agent ran" if attempt.state in _AFTER_RUN else "Agent running"
    if run_url and _URL.fullmatch(run_url):
        link = "the run" if attempt.state in _AFTER_RUN else "watch it live"
        line += f" ([{link}]({run_url}))"
    return line


def _pull_request_done(attempt: Attempt) -> bool:
    if STEP_PULL_REQUEST in attempt.steps or attempt.state == AttemptState.done:
        return True
    # A follow-up knows its pull request from the start; it is done once updated.
    return attempt.kind == AttemptKind.issue and attempt.pr_number is not None


def _pull_request_line(attempt: Attempt, follow_up: bool) -> str:
    line = "Pull request updated" if follow_up else "Pull request opened"
    if attempt.pr_number is None:
        return line
    number = f"#{attempt.pr_number}"
    if _URL.fullmatch(attempt.pr_url):
        return f"{line}: [{number}]({attempt.pr_url})"
    return f"{line}: {number}"


def _footer(attempt: Attempt, label: str | None, mention: str | None) -> str:
    reason = escape(attempt.reason) if attempt.reason else ""
    if attempt.kind == AttemptKind.issue:
        again = f"the {_code(label)} label" if label else "the label"
        retry = f"To try again, remove {again} from the issue and add it again."
    else:
        who = _code(mention) if mention else "the agent"
        retry = f"To try again, comment on the pull request mentioning {who} again."
    match attempt.state:
        case AttemptState.waiting:
            return f"**Waiting:** {reason or 'for its turn.'}"
        case AttemptState.done:
            return "**Done.**" + (f" {reason}" if reason else "")
        case AttemptState.failed:
            return f"**Failed:** {reason or 'the attempt did not finish.'}\n\n{retry}"
        case AttemptState.stopped:
            return f"**Stopped:** {reason or 'stopped by a person.'}\n\n{retry}"
        case AttemptState.ignored:
            return f"**Not started:** {reason or 'this trigger is not acted on.'}"
        case _:
            return ""


def escape(fragment: str, limit: int = 500) -> str:
    """``fragment`` as inert Markdown on one line: words that would become a mention, a
    reference or a link go in code spans, Markdown and HTML punctuation is escaped."""
    words = text.one_line(fragment, limit).split(" ")
    return " ".join(_code(w) if _LINKY.search(w) else _MARKDOWN.sub(r"\\\1", w) for w in words)


def _code(value: str) -> str:
    """``value`` as a code span (nothing inside one is a link, a mention or markup)."""
    value = text.one_line(value, 300)
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"
