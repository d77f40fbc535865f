"""Whether a comment mentions the pipeline (``@agentfarm``) as a person would read it.

A mention counts only where it is prose: not inside code (fenced or indented blocks, inline
code spans, ``<code>``/``<pre>``) and not in a quote (``>`` lines), so quoting an earlier
request or showing the command in a snippet does not start a run. It is word-bounded and
case-insensitive, as forges resolve mentions: ``@agentfarm-bot``, ``me@agentfarm.dev`` or
``@agentfarm/team`` are other names.
"""

from __future__ import annotations

import re

_HTML_CODE_RE = re.compile(r"<(pre|code)\b[^>]*>.*?(</\1\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_QUOTE_RE = re.compile(r"^ {0,3}>")
_INDENTED_RE = re.compile(r"^(\t| {4})")
_INLINE_CODE_RE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)")


def _mention_re(mention: str) -> re.Pattern[str]:
    # Not after a character that would make it part of an address or a longer word; not
    # before one that makes it a longer login (`-`, letters), a team (`/`) or a domain (`.x`).
    return re.compile(
        rf"(?<![\w@./-]){re.escape(mention)}(?![\w/-]|\.\w)",
        re.IGNORECASE,
    )


def prose_lines(text: str) -> list[str]:
    """The lines of ``text`` that are neither code nor quotes, with inline code removed."""
    text = _HTML_CODE_RE.sub(" ", text)
    lines: list[str] = []
    fence = ""
    previous_blank = True
    for line in text.splitlines():
        if fence:
            stripped = line.strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                fence = ""
            continue
        opening = _FENCE_RE.match(line)
        if opening:
            fence = opening.group(1)
            continue
        blank = not line.strip()
        indented_code = bool(_INDENTED_RE.match(line)) and previous_blank and not blank
        if indented_code:
            # An indented block runs on until a line that is not indented.
            continue
        previous_blank = blank
        if _QUOTE_RE.match(line):
            continue
        lines.append(_INLINE_CODE_RE.sub(" ", line))
    return lines


def mentions(text: str, mention: str) -> bool:
    """True when ``mention`` (``@name``) appears in the prose of ``text``."""
    pattern = _mention_re(mention)
    return any(pattern.search(line) for line in prose_lines(text))
