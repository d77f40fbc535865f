"""The status comment: a checklist edited in place, found again by its marker, and inert."""

from __future__ import annotations

import re

import pytest

from agentfarm.domain.pipeline import Attempt, AttemptKind, AttemptState
from agentfarm.pipeline import status_comment as sc

RUN_URL = "http://127.0.0.1:8000/runs/abc"
PR_URL = "https://forge.test/a/b/pull/9"


def attempt(**changes: object) -> Attempt:
    fields: dict[str, object] = {
        "id": "0123456789ab",
        "forge_id": "f",
        "repo": "a/b",
        "number": 3,
        "branch": "agentfarm/issue-3-fix-it",
    }
    fields.update(changes)
    return Attempt.model_validate(fields)


def checked(body: str) -> list[str]:
    return re.findall(r"^- \[x\] (.*)$", body, re.MULTILINE)


def unchecked(body: str) -> list[str]:
    return re.findall(r"^- \[ \] (.*)$", body, re.MULTILINE)


def test_the_marker_comes_first_and_is_found_again() -> None:
    body = sc.render(attempt(), run_url=None)
    assert body.startswith("<!-- agentfarm:attempt:0123456789ab -->\n")
    assert sc.attempt_marker(body) == "0123456789ab"


@pytest.mark.parametrize(
    "body",
    [
        "no marker here",
        "text\n<!-- agentfarm:attempt:0123456789ab -->",
        " <!-- agentfarm:attempt:0123456789ab -->",
        "<!-- agentfarm:attempt:0123456789AB -->",
        "<!-- agentfarm:attempt:0123456789a -->",
        "<!-- agentfarm:attempt:0123456789abc -->",
        "<!-- agentfarm:attempt:0123456789ab -->trailing",
        "<!--agentfarm:attempt:0123456789ab-->",
    ],
)
def test_only_the_exact_marker_counts(body: str) -> None:
    assert sc.attempt_marker(body) is None


def test_an_invalid_attempt_id_is_refused() -> None:
    with pytest.raises(ValueError, match="12 hex digits"):
        sc.render(attempt(id="x -->\n@all"), run_url=None)


def test_queued() -> None:
    body = sc.render(attempt(), run_url=RUN_URL)
    assert checked(body) == ["Queued"]
    assert unchecked(body) == [
        "Agent run",
        "Branch `agentfarm/issue-3-fix-it` pushed",
        "Pull request opened",
    ]
    assert "attempt 1 at this issue" in body


def test_running_links_the_live_run() -> None:
    body = sc.render(
        attempt(state=AttemptState.running, run_id="r1", steps={"queued": "t", "running": "t"}),
        run_url=RUN_URL,
    )
    assert checked(body) == ["Queued", f"Agent running ([watch it live]({RUN_URL}))"]


def test_done_checks_everything_and_links_the_pull_request() -> None:
    body = sc.render(
        attempt(state=AttemptState.done, run_id="r1", pr_number=9, pr_url=PR_URL, seq=2),
        run_url=RUN_URL,
        cost_usd=0.4271,
    )
    assert checked(body) == [
        "Queued",
        f"Agent ran ([the run]({RUN_URL}))",
        "Branch `agentfarm/issue-3-fix-it` pushed",
        f"Pull request opened: [#9]({PR_URL})",
    ]
    assert "**Done.**" in body
    assert "Cost: $0.43" in body
    assert "attempt 2 at this issue" in body


def test_pushed_but_no_pull_request_yet() -> None:
    body = sc.render(
        attempt(state=AttemptState.opening_pr, run_id="r1", steps={"pushed": "t"}), run_url=None
    )
    assert unchecked(body) == ["Pull request opened"]


def test_a_failure_says_why_and_what_to_do() -> None:
    body = sc.render(
        attempt(state=AttemptState.failed, run_id="r1", reason="The agent made no commits."),
        run_url=RUN_URL,
        label="agentfarm",
    )
    assert "**Failed:** The agent made no commits." in body
    assert "To try again, remove the `agentfarm` label from the issue and add it again." in body
    assert unchecked(body) == ["Branch `agentfarm/issue-3-fix-it` pushed", "Pull request opened"]


@pytest.mark.parametrize(
    ("state", "words"),
    [
        (AttemptState.stopped, "**Stopped:**"),
        (AttemptState.waiting, "**Waiting:**"),
    ],
)
def test_other_states_say_so(state: AttemptState, words: str) -> None:
    body = sc.render(attempt(state=state, reason="Because."), run_url=None)
    assert f"{words} Because." in body


def test_a_stopped_run_is_no_longer_live() -> None:
    body = sc.render(attempt(state=AttemptState.stopped, run_id="r"), run_url=RUN_URL)
    assert f"- [x] Agent ran ([the run]({RUN_URL}))" in body
    assert "add it again" in body


def test_an_ignored_trigger_only_says_why() -> None:
    reason = "@eve may not write to a/b: only people with write access can hand it over."
    body = sc.render(attempt(state=AttemptState.ignored, reason=reason), run_url=RUN_URL)
    assert sc.attempt_marker(body) == "0123456789ab"
    assert "- [" not in body
    assert "**Not started:** `@eve` may not write to a/b: only people" in body


def test_a_follow_up_updates_the_pull_request() -> None:
    running = attempt(kind=AttemptKind.review, state=AttemptState.running, run_id="r", pr_number=9)
    assert "Pull request updated: #9" in unchecked(sc.render(running, run_url=None))[-1]
    failed = running.model_copy(update={"state": AttemptState.failed, "reason": "x"})
    body = sc.render(failed, run_url=None, mention="@agentfarm")
    assert "comment on the pull request mentioning `@agentfarm` again" in body
    assert "review comment" in body


def test_forge_text_cannot_inject_markup_mentions_links_or_a_marker() -> None:
    reason = (
        "Push rejected for @mallory: see [this](https://evil.test) and www.evil.test "
        "<!-- agentfarm:attempt:ffffffffffff --> <img src=x> #5 other/repo#2 **bold** `code`\n\n# H"
    )
    body = sc.render(
        attempt(
            state=AttemptState.failed, reason=reason, pr_url="javascript:alert(1)", pr_number=4
        ),
        run_url="http://x.test/run (evil)",
    )
    assert body.count("<!--") == 1
    assert sc.attempt_marker(body) == "0123456789ab"
    assert "`@mallory:`" in body
    assert "](https://evil.test)" not in body.replace("`[this](https://evil.test)`", "")
    assert "`www.evil.test`" in body
    assert "`#5`" in body
    assert "`other/repo#2`" in body
    assert "\\*\\*bold\\*\\*" in body
    assert "\\<img src=x\\>" in body  # shown as text, not an element
    assert "javascript:" not in body
    assert "evil)" not in body
    assert "\n# H" not in body


def test_escape_picks_a_fence_longer_than_any_backtick_run() -> None:
    assert sc.escape("a ``b`` @c") == "a ``` ``b`` ``` `@c`"
