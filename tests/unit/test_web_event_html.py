"""The rendered-HTML cache: bounded in bytes, least recently used out first; an event's box
escapes whatever its type says; and how a branch outcome (`run.branch`) reads on the page and
in a terminal."""

from __future__ import annotations

import sys
from collections import OrderedDict

import pytest

from agentfarm.cli import event_text
from agentfarm.domain import models
from agentfarm.web import event_html


@pytest.fixture
def small_cache(monkeypatch: pytest.MonkeyPatch) -> int:
    limit = 256 * 1024
    monkeypatch.setattr(event_html, "CACHE_BYTES", limit)
    monkeypatch.setattr(event_html, "_cache", OrderedDict())
    monkeypatch.setattr(event_html, "_cached_bytes", 0)
    return limit


def text_event(seq: int, size: int = 5000) -> models.Event:
    return models.Event(
        run_id="abcdef012345", seq=seq, type=models.EventType.agent_text, data={"text": "w " * size}
    )


def test_an_events_box_escapes_its_type_and_its_text() -> None:
    """An event's type is a plain string in the store (an unknown one is shown as it is): it
    reaches the box's class attribute escaped, as the text reaches its body."""
    hostile = models.Event(
        run_id="abcdef012345", seq=7, type='x" onmouseover="alert(1)', data={"text": "<b>"}
    )
    html = event_html.event_html(hostile)
    assert html.startswith('<div class="ev ev-x&#34; onmouseover=&#34;alert(1)" id="ev-7"')
    assert '" onmouseover="' not in html
    text = models.Event(
        run_id="abcdef012345", seq=8, type=models.EventType.agent_text, data={"text": "<b>"}
    )
    assert event_html.event_html(text) == (
        '<div class="ev ev-agent-text" id="ev-8" data-seq="8"><div class="md"><p>&lt;b&gt;</p>\n'
        "</div></div>"
    )


def test_cache_is_bounded_in_bytes(small_cache: int) -> None:
    # Fails before: the cache held 50,000 entries whatever their size (no CACHE_BYTES).
    for seq in range(1, 201):
        event_html.event_html(text_event(seq))
    held = sum(event_html._KEY_BYTES + sys.getsizeof(html) for html in event_html._cache.values())
    assert held == event_html.cache_bytes()
    assert small_cache // 2 < held <= small_cache
    assert 0 < len(event_html._cache) < 200
    assert (text_event(1).run_id, 200) in event_html._cache  # the newest stay


def test_a_hit_keeps_an_entry_and_a_huge_entry_does_not_stick(small_cache: int) -> None:
    first = event_html.event_html(text_event(1))
    for seq in range(2, 200):
        assert event_html.event_html(text_event(1)) == first  # used again: kept
        event_html.event_html(text_event(seq))
    assert ("abcdef012345", 1) in event_html._cache
    huge = event_html.event_html(text_event(999, size=200_000))
    assert "w w" in huge
    assert event_html.cache_bytes() <= small_cache


@pytest.mark.parametrize(
    ("data", "html", "line", "failed"),
    [
        (
            {"branch": "agentfarm/issue-1-x", "start": "a" * 40, "head": "b" * 40,
             "commits": 2, "pushed": True, "error": None},
            "branch <code>agentfarm/issue-1-x</code>: 2 commits pushed, "
            "head <code>bbbbbbbbbbbb</code>",
            "branch agentfarm/issue-1-x: 2 commits pushed, head bbbbbbbbbbbb",
            False,
        ),
        (
            {"branch": "b", "start": "a" * 40, "head": "a" * 40, "commits": 0,
             "pushed": False, "error": None},
            "branch <code>b</code>: no commits, nothing pushed",
            "branch b: no commits, nothing pushed",
            False,
        ),
        (
            {"branch": "b", "start": "a" * 40, "head": "c" * 40, "commits": 1,
             "pushed": False, "error": "git push failed: <rejected>"},
            "branch <code>b</code> not pushed (1 commit): git push failed: &lt;rejected&gt;",
            "branch b not pushed (1 commit): git push failed: <rejected>",
            True,
        ),
    ],
)  # fmt: skip
def test_a_branch_outcome_reads_as_one_sentence(
    data: dict[str, object], html: str, line: str, failed: bool
) -> None:
    run_id = models.new_id()  # rendered HTML is cached by (run, seq)
    event = models.Event(run_id=run_id, seq=9, type=models.EventType.run_branch, data=data)
    shown = event_html.event_html(event)
    assert html in shown
    assert ("is-error" in shown) is failed
    text = event_text.event_line(event.model_dump(mode="json"))
    assert text is not None and text.plain.endswith(line)
