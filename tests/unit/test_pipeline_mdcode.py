"""Where Markdown shows text verbatim, erring toward "not code"."""

from __future__ import annotations

import pytest

from agentfarm.pipeline import mdcode, text


def code_of(markdown: str) -> list[str]:
    # The tag pattern is the one text.clean reads tags with.
    return [markdown[a:b] for a, b in mdcode.ranges(markdown, text._TAG)]


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("a `b` c ``d ` e`` f", ["`b`", "``d ` e``"]),
        ("```py\nx = 1\n```\nafter `y`", ["```py\nx = 1\n```\n", "`y`"]),
        ("~~~\nx\n~~~~\n", ["~~~\nx\n~~~~\n"]),
        ("````\n```\nstill code\n````", ["````\n```\nstill code\n````"]),
        ("```\nunclosed\n", ["```\nunclosed\n"]),
        # Not code: unmatched runs, escaped backticks, backticks inside a tag, raw HTML blocks,
        # a backtick fence whose info string has a backtick, spans across blank lines.
        ("a `b", []),
        ("\\`a` b", []),
        ('text <a title="`x`">`y`</a>', ["`y`"]),
        ("<div>\n`x`\n```\ny\n```", []),
        ("- <span>\n  `x`", []),
        ("``` a`b\nx\n```", ["```"]),  # the last line opens a fence
        ("`a\n\nb`", []),
    ],
)
def test_ranges(markdown: str, expected: list[str]) -> None:
    assert code_of(markdown) == expected


def test_inside() -> None:
    found = [(2, 5), (9, 10)]
    assert [p for p in range(12) if mdcode.inside(found, p)] == [2, 3, 4, 9]
    assert not mdcode.inside([], 0)
