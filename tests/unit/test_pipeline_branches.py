"""Branch names: made from the issue, never reused, and checked as git checks them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agentfarm.pipeline import branches


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Fix the crash on empty input", "fix-the-crash-on-empty-input"),
        ("  Café: über-module -- crashes!!! ", "cafe-uber-module-crashes"),
        (
            "A very long title that goes on and on past forty characters",
            "a-very-long-title-that-goes-on-and-on-pa",
        ),
        ("one two three four five six seven eigh-t", "one-two-three-four-five-six-seven-eigh-t"),
        ("1234567890123456789012345678901234567890-x", "1234567890123456789012345678901234567890"),
        ("日本語のタイトル", "change"),
        ("", "change"),
        ("../../etc/passwd; rm -rf ~", "etc-passwd-rm-rf"),
    ],
)
def test_slug(title: str, expected: str) -> None:
    made = branches.slug(title)
    assert made == expected
    assert len(made) <= branches.MAX_SLUG
    assert not made.endswith("-")


def test_issue_branch_takes_the_first_free_name_and_never_reuses_one() -> None:
    taken = {"agentfarm/issue-12-fix-it", "agentfarm/issue-12-fix-it-2"}
    assert branches.issue_branch(12, "Fix it", taken.__contains__) == "agentfarm/issue-12-fix-it-3"
    assert branches.issue_branch(12, "Fix it", lambda _name: False) == "agentfarm/issue-12-fix-it"


def test_issue_branch_gives_up_with_a_reason() -> None:
    with pytest.raises(ValueError, match="is taken: delete old agentfarm branches"):
        branches.issue_branch(1, "x", lambda _name: True)
    with pytest.raises(ValueError, match="not an issue number"):
        branches.issue_branch(0, "x", lambda _name: False)


VALID = [
    "main",
    "agentfarm/issue-1-fix",
    "feature/x.y",
    "release-1.0",
    "a@b",
    "dévelopement",
    "x" * 200,
]
INVALID = [
    "",
    "-x",
    "/x",
    "x/",
    "x.",
    "a..b",
    "a//b",
    "a@{b",
    "@",
    "a b",
    "a\tb",
    "a\x7fb",
    "a~b",
    "a^b",
    "a:b",
    "a?b",
    "a*b",
    "a[b",
    "a\\b",
    ".x",
    "a/.x",
    "x.lock",
    "a.lock/b",
    "HEAD",
    "x" * 201,
    "a\u202eb",
    "a\u200bb",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_branch_accepts(name: str) -> None:
    assert branches.valid_branch(name)


@pytest.mark.parametrize("name", INVALID)
def test_valid_branch_refuses(name: str) -> None:
    assert not branches.valid_branch(name)


@pytest.mark.parametrize("name", VALID + [n for n in INVALID if "\x00" not in n])
def test_valid_branch_never_accepts_what_git_refuses(name: str, tmp_path: Path) -> None:
    git = subprocess.run(
        ["git", "check-ref-format", "--branch", name],
        capture_output=True,
        check=False,
        cwd=tmp_path,
    )
    if branches.valid_branch(name):
        assert git.returncode == 0, git.stderr
    elif git.returncode == 0:
        # Stricter than git only on purpose: length, HEAD, invisible characters.
        assert len(name) > branches.MAX_BRANCH or name in {"HEAD", "@"} or not name.isprintable()
