"""Where Markdown shows text verbatim: fenced code blocks and code spans.

Pure. :mod:`.text` leaves tags inside code alone (``<button class="x">`` or
``template <typename T>`` in a code sample is what the reader sees), so this errs toward "not
code": a block (lines up to a blank line) that has a line starting with ``<`` may be raw HTML,
in which nothing is code; a tag that starts before a backtick wins over the backtick, as in
CommonMark; an escaped backtick opens nothing; indented code and code in lists or quotes is not
recognized. Text wrongly taken for prose is only cleaned more than needed.
"""

from __future__ import annotations

import bisect
import re
import sys

Ranges = list[tuple[int, int]]

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})([^\n]*)")
_HTML_LINE = re.compile(r"[ \t]*(?:(?:[-*+>]|\d{1,9}[.)])[ \t]+)*<")
_BACKTICKS = re.compile(r"`+")


def ranges(text: str, tag: re.Pattern[str]) -> Ranges:
    """Sorted, disjoint ``(start, end)`` of the code in ``text``; ``tag`` finds a tag."""
    found: Ranges = []
    pos = 0
    fence: tuple[str, int] | None = None
    fence_start = prose_start = 0
    html_block = False
    for line in text.splitlines(keepends=True):
        end = pos + len(line)
        if fence is not None:
            close = _FENCE.fullmatch(line.rstrip("\n"))
            if close and _closes(close, *fence):
                found.append((fence_start, end))
                fence = None
                prose_start = end
        elif not line.strip():
            _spans(text, prose_start, pos, tag, html_block, found)
            prose_start, html_block = end, False
        else:
            html_block = html_block or bool(_HTML_LINE.match(line))
            opening = _FENCE.fullmatch(line.rstrip("\n"))
            if opening and not html_block:
                marks, info = opening.groups()
                if marks[0] == "~" or "`" not in info:
                    _spans(text, prose_start, pos, tag, html_block, found)
                    fence, fence_start = (marks[0], len(marks)), pos
        pos = end
    if fence is not None:  # an unclosed fence runs to the end of the text
        found.append((fence_start, len(text)))
    else:
        _spans(text, prose_start, len(text), tag, html_block, found)
    return found


def _closes(line: re.Match[str], char: str, length: int) -> bool:
    marks, rest = line.groups()
    return marks[0] == char and len(marks) >= length and not rest.strip()


def inside(found: Ranges, position: int) -> bool:
    """Whether ``position`` is inside one of ``found``."""
    index = bisect.bisect_right(found, (position, sys.maxsize)) - 1
    return index >= 0 and found[index][0] <= position < found[index][1]


def _spans(text: str, start: int, end: int, tag: re.Pattern[str], html: bool, out: Ranges) -> None:
    """Code spans of the prose ``text[start:end]`` (none in what may be an HTML block)."""
    if html or start >= end:
        return
    unclosed: set[int] = set()  # run lengths with no closing run after some earlier point
    i = start
    while True:
        tick = _BACKTICKS.search(text, i, end)
        if tick is None:
            return
        within = _tag_over(text, i, tick.start(), end, tag)
        if within is not None:
            i = within
            continue
        backslashes = len(text[i : tick.start()]) - len(text[i : tick.start()].rstrip("\\"))
        if backslashes % 2:
            i = tick.start() + 1
            continue
        length = len(tick.group())
        close = None
        if length not in unclosed:
            close = re.compile(rf"(?<!`)`{{{length}}}(?!`)").search(text, tick.end(), end)
        if close is None:
            unclosed.add(length)
            i = tick.end()
            continue
        out.append((tick.start(), close.end()))
        i = close.end()


def _tag_over(text: str, i: int, tick: int, end: int, tag: re.Pattern[str]) -> int | None:
    """The end of a tag that starts in ``[i, tick)`` and covers ``tick``, if there is one."""
    lt = text.find("<", i, tick)
    while lt != -1:
        match = tag.match(text, lt, end)
        if match and match.end() > tick:
            return match.end()
        lt = text.find("<", match.end() if match else lt + 1, tick)
    return None
