"""Untrusted text from a forge (issue titles and bodies, comments) made safe to quote to an
agent and to show.

Pure: no I/O. What a person reading the issue on the forge cannot see is removed, so an agent
is never handed instructions a reviewer could not have read: HTML comments (unterminated ones
run to the end), zero-width, bidirectional, control, tag and variation-selector characters,
the HTML entities that encode them, elements that are hidden (``hidden``, ``display:none``,
``<script>``, ``<style>``, ...), processing instructions and declarations, HTML attributes
other than ``href``/``src``, image alt text, link titles, and the link reference definitions
and footnotes nothing refers to (``[//]: # (hidden)``). The text is NFKC-normalized and
truncated with a visible note.

This fails closed: comments, entities, alt text and link titles go wherever they appear, code
included; only tags inside code (as :mod:`.mdcode` finds it, erring toward prose) keep their
attributes and content, because there the reader sees them as written.

``clean(clean(x)) == clean(x)``: removing one thing can join its neighbours into another (two
halves of a comment around a removed one), so the passes repeat until nothing changes; text
that keeps changing after many passes is adversarial and is reduced to plain words.
"""

from __future__ import annotations

import html
import re
import unicodedata

from agentfarm.pipeline import mdcode

DEFAULT_LIMIT = 60_000
#: The smallest limit that leaves room for the truncation note.
MIN_LIMIT = 64
_MAX_PASSES = 12

#: Removed wherever they appear (besides every other format character, category Cf).
_INVISIBLE = re.compile(
    "["
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # control characters but \t and \n
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164"
    "\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\ud800-\udfff"
    "\U0001d173-\U0001d17a\U000e0000-\U000e007f\U000e0100-\U000e01ef"
    "]+"
)
_NEWLINES = re.compile("\r\n?|[\u2028\u2029]")
_ENTITY = re.compile(r"&(?:#[xX][0-9a-fA-F]{1,16}|#[0-9]{1,16}|[A-Za-z][A-Za-z0-9]{0,40});?")
_COMMENT = re.compile(r"<!--.*?(?:-->|--!>|\Z)", re.DOTALL)
# What an HTML parser turns into a comment: processing instructions, declarations, CDATA;
# each with the end it needs.
_BOGUS_COMMENTS = (
    (re.compile(r"<\?.*?\?>", re.DOTALL), "?>"),
    (re.compile(r"<![A-Za-z][^>]*>"), ">"),
    (re.compile(r"<!\[CDATA\[.*?\]\]>", re.DOTALL), "]]>"),
)
# A tag as a lenient HTML parser reads it (quoted values may hold `>`). Bounded so that text
# full of `<` stays linear.
_TAG = re.compile(
    r"<(/?)([A-Za-z][A-Za-z0-9-]{0,40})(?=[\s/>])"
    r"((?:\"[^\"]{0,4000}\"|'[^']{0,4000}'|[^'\"<>]){0,4000})>"
)
_ATTR = re.compile(r"([^\s\"'>/=]+)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'=<>`]+))?")
_KEPT_ATTRS = frozenset({"href", "src"})
_DROPPED_ELEMENTS = frozenset({"script", "style", "template", "noscript", "textarea", "title"})
_VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_HIDING_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*(?:hidden|collapse)|"
    r"(?:font-size|opacity|max-height|height|width)\s*:\s*0(?![.\d]*[1-9])",
    re.IGNORECASE,
)
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.DOTALL)
_BRACKETED = r"(?:[^\[\]]|\[[^\[\]]*\])*"
_IMAGE_ALT = re.compile(r"!\[" + _BRACKETED + r"\](?=[(\[])")
_LINK_TITLE = re.compile(
    r"\]\(\s*(<[^<>\n]*>|[^\s()<>]*(?:\([^\s()]*\)[^\s()]*)*)"
    r"\s+(?:\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|\((?:[^()\\]|\\.)*\))\s*\)"
)
_REF_DEF = re.compile(
    r"^ {0,3}\[(" + _BRACKETED + r")\]:[ \t]*\n?[ \t]*(<[^<>\n]*>|\S+)"
    r"(?:[ \t]*\n?[ \t]*(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?[ \t]*(?:\n|\Z)",
    re.MULTILINE,
)
# A footnote shows only where something refers to it; continuation lines are indented.
_FOOTNOTE = re.compile(
    r"^ {0,3}\[\^([^\]\s]+)\]:[^\n]*(?:\n(?:    |\t)[^\n]*)*(?:\n|\Z)", re.MULTILINE
)
_PLAIN = re.compile(r"[^A-Za-z0-9 \n.,-]+")
_SPACES = re.compile(r"\s+")


def clean(text: str, *, limit: int = DEFAULT_LIMIT) -> str:
    """Untrusted forge text, safe to quote and show, at most ``limit`` characters."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT} characters, not {limit}")
    return _truncate(_settle(text), limit)


def one_line(text: str, limit: int = 200) -> str:
    """:func:`clean` for a title: whitespace (newlines too) collapsed to single spaces, at most
    ``limit`` characters, ending ``...`` when cut."""
    if limit < 4:
        raise ValueError(f"limit must be at least 4 characters, not {limit}")
    line = text
    for _ in range(_MAX_PASSES):
        again = _collapse(_settle(line))
        if again == line:
            break
        line = again
    else:
        line = _collapse(_PLAIN.sub("", line))
    if len(line) <= limit:
        return line
    head = _collapse(_settle(line[: limit - 3]))[: limit - 3].rstrip()
    cut = f"{head}..."
    if _pass(cut) == cut and _collapse(cut) == cut:
        return cut
    return _collapse(_PLAIN.sub("", head)) + "..."


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _settle(text: str) -> str:
    """Run the cleaning pass until it changes nothing."""
    for _ in range(_MAX_PASSES):
        again = _pass(text)
        if again == text:
            return text
        text = again
    # Something keeps rebuilding itself out of its own removal: keep the words only.
    return _PLAIN.sub("", text)


def _pass(text: str) -> str:
    text = _characters(text)
    text = _ENTITY.sub(_entity, text)
    text = _drop_bogus_comments(_COMMENT.sub("", text))
    text = _drop_hidden_elements(text)
    text = _strip_attributes(text)
    text = _IMAGE_ALT.sub("![]", text)
    text = _LINK_TITLE.sub(r"](\1)", text)
    return _drop_footnotes(_drop_reference_definitions(text))


def _characters(text: str) -> str:
    text = _INVISIBLE.sub("", _NEWLINES.sub("\n", text))
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", _NEWLINES.sub("\n", text))
    return "".join(c for c in text if c < "\u0600" or unicodedata.category(c) != "Cf")


def _invisible(char: str) -> bool:
    return bool(_INVISIBLE.fullmatch(char)) or unicodedata.category(char) == "Cf"


def _entity(match: re.Match[str]) -> str:
    """An entity that decodes to characters nobody sees is removed (with the rest of what it
    decodes to kept); any other entity stays as written."""
    decoded = html.unescape(match.group())
    if not any(_invisible(c) for c in decoded):
        return match.group()
    return "".join(c for c in decoded if not _invisible(c))


def _drop_bogus_comments(text: str) -> str:
    """Only up to the last end marker: an opening after it can match nothing, and trying every
    one of them to the end of the text would take quadratic time."""
    for pattern, end in _BOGUS_COMMENTS:
        last = text.rfind(end)
        if last != -1:
            last += len(end)
            text = pattern.sub("", text[:last]) + text[last:]
    return text


def _attributes(raw: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) or "" for m in _ATTR.finditer(raw)}


def _hides(name: str, raw: str) -> bool:
    if name in _DROPPED_ELEMENTS:
        return True
    attrs = _attributes(raw)
    if "hidden" in attrs:
        return True
    if attrs.get("type", "").strip("\"'").lower() == "hidden":
        return True
    style = _CSS_COMMENT.sub("", html.unescape(attrs.get("style", "")))
    return bool(_HIDING_STYLE.search(style))


def _drop_hidden_elements(text: str) -> str:
    """Hidden elements go with their content, up to their matching end tag (or the end).
    Tags in code are text (an issue about ``<script>`` quotes one)."""
    code = mdcode.ranges(text, _TAG)
    out: list[str] = []
    pos = 0
    for match in _TAG.finditer(text):
        closing, name, raw = match.group(1), match.group(2).lower(), match.group(3)
        if match.start() < pos or closing or not _hides(name, raw):
            continue
        if mdcode.inside(code, match.start()):
            continue
        out.append(text[pos : match.start()])
        pos = match.end()
        if name in _VOID_ELEMENTS or raw.rstrip().endswith("/"):
            continue
        depth = 1
        pos = len(text)
        for inner in _TAG.finditer(text, match.end()):
            if inner.group(2).lower() != name or mdcode.inside(code, inner.start()):
                continue
            if inner.group(1):
                depth -= 1
            elif not inner.group(3).rstrip().endswith("/"):
                depth += 1
            if depth == 0:
                pos = inner.end()
                break
    out.append(text[pos:])
    return "".join(out)


def _strip_attributes(text: str) -> str:
    """Tags keep ``href`` and ``src`` only, except in code, where they are what is shown."""
    code = mdcode.ranges(text, _TAG)
    return _TAG.sub(lambda m: m.group() if mdcode.inside(code, m.start()) else _bare_tag(m), text)


def _bare_tag(match: re.Match[str]) -> str:
    closing, name, raw = match.group(1), match.group(2), match.group(3)
    if closing:
        return f"</{name}>"
    kept = [m.group() for m in _ATTR.finditer(raw) if m.group(1).lower() in _KEPT_ATTRS]
    self_closing = " /" if raw.rstrip().endswith("/") else ""
    return "<" + " ".join([name, *kept]) + self_closing + ">"


def _drop_reference_definitions(text: str) -> str:
    """A link reference definition shows nothing: keep label and URL of one something links
    to (its title goes), drop one nothing links to (``[//]: # (hidden note)``)."""
    definitions = list(_REF_DEF.finditer(text))
    if not definitions:
        return text
    rest = _SPACES.sub(" ", _REF_DEF.sub("\n", text)).lower()
    out: list[str] = []
    pos = 0
    for match in definitions:
        out.append(text[pos : match.start()])
        pos = match.end()
        label = _SPACES.sub(" ", match.group(1).strip()).lower()
        if label and f"[{label}]" in rest:
            end = "\n" if match.group().endswith("\n") else ""
            out.append(f"[{match.group(1)}]: {match.group(2)}{end}")
    out.append(text[pos:])
    return "".join(out)


def _drop_footnotes(text: str) -> str:
    """A footnote nothing refers to is not shown: it goes."""
    notes = list(_FOOTNOTE.finditer(text))
    if not notes:
        return text
    rest = _FOOTNOTE.sub("\n", text).lower()
    unused = [m for m in notes if f"[^{m.group(1).lower()}]" not in rest]
    for match in reversed(unused):
        text = text[: match.start()] + text[match.end() :]
    return text


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = limit - len(_note(len(text)))
    for _ in range(3):
        head = _settle(text[:cut])
        result = head + _note(len(text) - len(head))
        if len(result) <= limit and _pass(result) == result:
            return result
        cut -= max(1, len(result) - limit)
    head = _PLAIN.sub("", text[: limit - len(_note(len(text)))])
    return head + _note(len(text) - len(head))


def _note(more: int) -> str:
    return f"\n\n[... truncated: {more} more characters]"
