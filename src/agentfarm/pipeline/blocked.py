"""``Blocked by #N``: the issues an issue waits for, read from its (cleaned) body.

Pure. Only same-repository ``#N`` references count (``owner/name#N`` and URLs are skipped);
code blocks and inline code are ignored, so an example in a code sample blocks nothing.
"""

from __future__ import annotations

import re

_FENCED = re.compile(
    r"^ {0,3}(?P<fence>`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}(?P=fence)[`~]*[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
_INLINE = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
_REFERENCE = r"(?:[\w.-]+/[\w.-]+)?#\d+\b"
# Between references: commas, `and`, `&`, or a new bullet ("- #4") on the next line.
_SEPARATOR = r"(?:[ \t]*(?:,|;|&|\band\b)?[ \t]*|[ \t]*\n[ \t]*[-*+][ \t]+)"
_BLOCKED = re.compile(
    r"\bblocked[ \t]*[-_ ]?[ \t]*by\b[ \t]*:?(?:[ \t]*\n[ \t]*[-*+])?[ \t]*"
    rf"(?P<refs>{_REFERENCE}(?:{_SEPARATOR}{_REFERENCE})*)",
    re.IGNORECASE,
)
_SAME_REPO = re.compile(r"(?<![\w/.-])#(\d{1,9})\b")


def blocked_by(body: str) -> list[int]:
    """Issue numbers named after ``Blocked by`` (``blocked-by: #3, #4``), sorted, once each."""
    prose = _INLINE.sub(" ", _FENCED.sub("\n", body))
    numbers: set[int] = set()
    for match in _BLOCKED.finditer(prose):
        numbers.update(int(n) for n in _SAME_REPO.findall(match.group("refs")))
    return sorted(n for n in numbers if n > 0)
