"""Events as HTML for people: markdown text, one-line tool calls that expand, highlighted
errors, a summarised result. Pure functions over ``models.Event``; the output is cached per
event (events never change), so many viewers of one run render each event once. The cache is
bounded in bytes (``CACHE_BYTES``), least recently used first out.

Markdown goes through markdown-it-py with raw HTML disabled: whatever the agent prints is
escaped, and its link validator drops ``javascript:``-style URLs.
"""

from __future__ import annotations

import json
import re
import sys
from collections import OrderedDict
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Literal

from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from agentfarm.domain import models
from agentfarm.domain.present import (
    branch_summary,
    fmt_cost,
    fmt_duration,
    one_line,
    parked_label,
    rate_limit_summary,
    tool_summary,
)

MAX_SHOWN = 20_000
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_md.enable("table")
#: Rendered HTML kept in memory, in bytes (about: the strings' own size plus the key's).
CACHE_BYTES = 32 << 20
_KEY_BYTES = 150
_cache: OrderedDict[tuple[str, int], str] = OrderedDict()
_cached_bytes = 0

STATUS_CLASS = {
    "queued": "badge-neutral",
    "starting": "badge-info",
    "running": "badge-info",
    "parked": "badge-warning",
    "succeeded": "badge-success",
    "failed": "badge-error",
    "stopped": "badge-warning",
    "lost": "badge-error",
}


#: Text that CommonMark renders as plain paragraphs: lines that start with a letter and hold
#: only letters, digits, spaces and punctuation that means nothing inline without ``*_`[]<&\\``
#: and ``|`` (tables), end in no space (two make a hard break), paragraphs split by empty
#: lines. No block starts with a letter, so each line is paragraph text (test_web_event_html
#: checks equality with markdown-it over this alphabet, by hypothesis).
_LINE = r"[^\W\d_](?:[^\W_]|[ !\"#$%'()+,./:;=>?@^{}-])*(?<! )"
_PLAIN = re.compile(rf"(?:{_LINE})?(?:\n(?:{_LINE})?)*")
_PARAGRAPHS = re.compile(r"\n{2,}")


def _fill(template: str, *values: object, **named: object) -> Markup:
    """``Markup(template).format(...)`` at a fraction of the cost: markupsafe's formatter is
    pure Python (about 15 µs a call, on every event a viewer is sent), while ``escape`` is C.
    Each value is escaped as that formatter would (what is already HTML passes as it is);
    ``template`` is always ours and uses plain ``{}`` fields."""
    escaped = {name: escape(value) for name, value in named.items()}
    return Markup(template.format(*map(escape, values), **escaped))  # noqa: S704


def plain_paragraphs(text: str) -> str | None:
    """``text`` as markdown-it renders it when it is plain paragraphs (``_PLAIN``), built
    directly (a plain line costs markdown-it about 90 µs); None for any other text."""
    if _PLAIN.fullmatch(text) is None:
        return None
    text = text.strip("\n").replace(">", "&gt;").replace('"', "&quot;")  # no & nor < here
    return "".join(f"<p>{para}</p>\n" for para in _PARAGRAPHS.split(text) if para)


def markdown(text: str) -> Markup:
    text = _clip(text)
    html = plain_paragraphs(text)
    if html is None:
        html = _md.render(text)
    return Markup(html)  # noqa: S704 (escaped: markdown-it with html=False, or the fast path)


def badge(status: str) -> Markup:
    cls = STATUS_CLASS.get(status, "badge-neutral")
    return _fill('<span class="badge {}">{}</span>', cls, status)


def run_badge(run: models.Run) -> Markup:
    """A run's status badge; a parked run's says until when (``parked until 10:10 UTC``)."""
    if run.status != models.RunStatus.parked:
        return badge(run.status)
    return _fill(
        '<span class="badge {}">{}</span>', STATUS_CLASS["parked"], parked_label(run.parked_until)
    )


def _clip(text: str) -> str:
    if len(text) <= MAX_SHOWN:
        return text
    return text[:MAX_SHOWN] + f"\n… ({len(text) - MAX_SHOWN} more characters in the raw events)"


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _result_text(content: Any) -> str:
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            else:
                parts.append(_pretty(block))
        return "\n".join(parts)
    return _pretty(content) if content is not None else ""


#: The classes an event's box may carry besides its kind's.
Extra = Literal["", " is-error"]


def _wrap(event: models.Event, body: Markup, extra: Extra = "") -> Markup:
    """The event's box. Built by hand, not by ``_fill``: every part is escaped or ours (the
    type is escaped, whoever wrote it; the seq is an int, the body Markup, ``extra`` one of
    ours), and this is on the path of every event a viewer is sent (issue 12: 9 µs a text
    event with ``_fill``, 5 without)."""
    kind = escape(event.type.replace(".", "-"))
    seq = int(event.seq)
    head = f'<div class="ev ev-{kind}{extra}" id="ev-{seq}" data-seq="{seq}">'
    return Markup(f"{head}{body}</div>")  # noqa: S704


def _body(event: models.Event) -> tuple[Markup, Extra]:
    d = event.data
    t = event.type
    if t == models.EventType.agent_text:
        text = markdown(str(d.get("text", "")))  # escaped HTML (see ``markdown``)
        return Markup(f'<div class="md">{text}</div>'), ""  # noqa: S704
    if t == models.EventType.agent_thinking:
        return _fill(
            '<details class="thinking"><summary>thinking</summary><div class="md">{}</div>'
            "</details>",
            markdown(str(d.get("text", ""))),
        ), ""
    if t == models.EventType.agent_tool_call:
        name = str(d.get("name", "tool"))
        tool_input = d.get("input")
        summary = tool_summary(name, tool_input, limit=120)
        label = summary[len(name) + 2 :] if summary.startswith(f"{name}: ") else ""
        return _fill(
            '<details class="tool" id="tool-{}"><summary><span class="tool-name">{}</span> '
            '<span class="tool-arg">{}</span></summary><div class="tool-body">'
            '<div class="label">input</div><pre>{}</pre><div class="tool-slot"></div></div>'
            "</details>",
            str(d.get("id", "")),
            name,
            label,
            _clip(_pretty(tool_input)),
        ), ""
    if t == models.EventType.agent_tool_result:
        error = bool(d.get("is_error"))
        note = " (truncated)" if d.get("truncated") else ""
        return _fill(
            '<div class="tool-result{}" data-for-tool="{}"><div class="label">{}{}</div>'
            "<pre>{}</pre></div>",
            " is-error" if error else "",
            str(d.get("id", "")),
            "error" if error else "result",
            note,
            _clip(_result_text(d.get("content"))),
        ), ""
    if t == models.EventType.agent_result:
        error = bool(d.get("is_error"))
        usage = d.get("usage") or {}
        tokens = (
            sum(v for v in usage.values() if isinstance(v, int)) if isinstance(usage, dict) else 0
        )
        duration = d.get("duration_ms")
        facts = " · ".join(
            [
                str(d.get("subtype", "result")),
                fmt_cost(d.get("cost_usd"), bool(d.get("cost_estimated"))),
                f"{d.get('num_turns') or 0} turns",
                f"{tokens} tokens",
                fmt_duration(duration / 1000 if isinstance(duration, int | float) else None),
            ]
        )
        return _fill(
            '<div class="card result-card{}"><div class="card-title">{}</div>'
            '<div class="md">{}</div></div>',
            " alert-error" if error else "",
            ("Failed: " if error else "Finished: ") + facts,
            markdown(str(d.get("result") or "")),
        ), ""
    if t == models.EventType.run_status:
        status = str(d.get("status", "?"))
        parts = [_fill("run {}", badge(status))]
        if status == "parked":
            until = parked_label(d.get("until")).removeprefix("parked")
            reason = str(d.get("reason") or "").replace("_", " ")
            parts.append(_fill('{} <span class="muted">({})</span>', until, reason))
        if d.get("branch"):
            parts.append(_fill(" on <code>{}</code>", d["branch"]))
        if d.get("exit_code") is not None:
            parts.append(_fill(" (exit {})", d["exit_code"]))
        if d.get("error"):
            parts.append(_fill('<div class="alert alert-error">{}</div>', d["error"]))
            return Markup("").join(parts), " is-error"
        return Markup("").join(parts), ""
    if t == models.EventType.run_branch:
        template, values, failed = branch_summary(d)
        code = {k: _fill("<code>{}</code>", v) for k, v in values.items() if k != "error"}
        # The template is ours (no outside text); the values are escaped by format.
        sentence = _fill(template, **code, error=values["error"])
        return sentence, " is-error" if failed else ""
    if t == models.EventType.agent_rate_limit:
        said = rate_limit_summary(d)
        if said is None:
            return _fill('<span class="muted">usage limit: {}</span>', d.get("status")), ""
        return _fill('<span class="badge badge-warning">{}</span>', said), ""
    if t == models.EventType.run_notice:
        return _fill('<span class="muted">{}</span>', d.get("message", "")), ""
    if t == models.EventType.sandbox_egress_denied:
        return _fill(
            'egress denied: <code>{}:{}</code> <span class="muted">{}</span>',
            d.get("host", "?"),
            d.get("port", "?"),
            d.get("reason", ""),
        ), " is-error"
    if t == models.EventType.agent_init:
        tools = d.get("tools") or []
        return _fill(
            '<span class="muted">session {} · {} · {} tools · {}</span>',
            d.get("session_id", "?"),
            d.get("model", "?"),
            len(tools),
            d.get("permission_mode", ""),
        ), ""
    if t == models.EventType.run_waiting:
        seconds = float(d.get("seconds") or 0)
        ends = event.ts + timedelta(seconds=seconds)
        return _fill(
            '<span class="waiting">waiting for a follow-up (ends in {} s, at <time datetime="{}" '
            'data-until="{}">{}</time> UTC)</span>',
            f"{seconds:g}",
            *[ends.isoformat()] * 2,
            ends.strftime("%H:%M:%S"),
        ), ""
    if t == models.EventType.user_interrupt:
        return Markup('<span class="muted">you interrupted the turn</span>'), ""
    if t == models.EventType.user_message:
        return _fill(
            '<div class="bubble"><span class="label">you</span> {}</div>', d.get("text", "")
        ), ""
    if t == models.EventType.agent_stderr:
        return _fill('<pre class="stderr">{}</pre>', one_line(str(d.get("line", "")), 500)), ""
    if t == models.EventType.agent_unparsed:
        return _fill(
            '<pre class="stderr">unparsed: {}</pre>', one_line(str(d.get("line", "")), 300)
        ), ""
    return _fill(
        '<span class="muted">{}: {}</span>', t, one_line(json.dumps(d, default=str), 200)
    ), ""


def _entry_bytes(html: str) -> int:
    return _KEY_BYTES + sys.getsizeof(html)


def cache_bytes() -> int:
    """What the HTML cache holds now, in bytes (about)."""
    return _cached_bytes


def event_html(event: models.Event) -> str:
    global _cached_bytes
    key = (event.run_id, event.seq)
    cached = _cache.get(key)
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    body, extra = _body(event)
    html = str(_wrap(event, body, extra))
    _cache[key] = html
    _cached_bytes += _entry_bytes(html)
    while _cached_bytes > CACHE_BYTES and _cache:
        _, old = _cache.popitem(last=False)
        _cached_bytes -= _entry_bytes(old)
    return html


def events_html(events: Iterable[models.Event]) -> Markup:
    return Markup("".join(event_html(e) for e in events))  # noqa: S704 (built from escaped parts)
