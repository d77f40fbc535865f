"""`Blocked by #N` in an issue body."""

from __future__ import annotations

import pytest

from agentfarm.pipeline.blocked import blocked_by


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Blocked by #12", [12]),
        ("blocked-by: #3, #4", [3, 4]),
        ("BLOCKED BY #5 and #2 & #5", [2, 5]),
        ("Blocked_by #10; #11", [10, 11]),
        ("Needs a fix.\n\nBlocked by:\n- #7\n- #8\n\n#9 is unrelated", [7, 8]),
        ("Blocked by #4.\nAlso blocked by #1", [1, 4]),
        # Other repositories and URLs are not this repository's issues.
        ("Blocked by other/repo#5, #6", [6]),
        ("Blocked by https://forge.test/a/b/issues/4", []),
        # Code is an example, not a dependency.
        ("`Blocked by #1`", []),
        ("```\nBlocked by #2\n```\nBlocked by #3", [3]),
        ("~~~md\nBlocked by #2\n", []),
        ("``a ` Blocked by #2``", []),
        # Not a Blocked-by at all.
        ("unblocked by #5", []),
        ("not blocked by anything, see #5", []),
        ("Blocked by #0", []),
        ("", []),
    ],
)
def test_blocked_by(body: str, expected: list[int]) -> None:
    assert blocked_by(body) == expected
