"""The markdown fast path: text that CommonMark renders as plain paragraphs is built directly,
and it is exactly what markdown-it renders; any other text goes to markdown-it."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentfarm.web import event_html

#: The fast path's alphabet, plus what must send a text to markdown-it.
SAFE = "abcXYZéßΩж0129 !\"#$%'()+,./:;=>?@^{}-"
UNSAFE = "*_`[]<&\\|~\t\r\u00a0\u2028\ufeff\x00…"
LETTERS = "abcXYZéßΩж"
#: Lines the fast path takes (a letter first, no space last), or empty, or anything.
plain_lines = st.builds(
    lambda first, rest: (first + rest).rstrip(" "),
    st.sampled_from(LETTERS),
    st.text(alphabet=SAFE, max_size=30),
)
texts = (
    plain_lines
    | st.just("")
    | st.text(alphabet=SAFE + "\n", max_size=60)
    | st.text(alphabet=SAFE + "\n" + UNSAFE, max_size=40)
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(texts, min_size=1, max_size=4).map("\n".join))
@example("1. x")
@example("# x")
@example("- x")
@example("a  ")
@example("a \nb")
@example("a  \nb")
@example("&amp;")
@example("a &amp; b")
@example("<b>x</b>")
@example("a <b>")
@example("a\tb")
@example("a\r\nb")
@example("a\n===")
@example("a\n---")
@example("a\n\n\n\nb\n")
@example("a | b\n--|--")
@example('say "hi" > there')
@example("x:javascript:alert(1)")
@example("café ñandú Ωμέγα жук")
def test_the_fast_path_renders_what_markdown_it_renders(text: str) -> None:
    fast = event_html.plain_paragraphs(text)
    if fast is not None:
        assert fast == event_html._md.render(text)


@pytest.mark.parametrize(
    "text",
    [
        "step 12 ts:1764526800.123456",
        "Running the tests now.\nThey pass: 12 passed, 0 failed.",
        "First paragraph.\n\nSecond one (with a note); done!",
        "Ça marche, voilà.",
        'Reading src/mod.py: "ok" -> fine.',
        "",
    ],
)
def test_plain_lines_take_the_fast_path(text: str) -> None:
    assert event_html.plain_paragraphs(text) == event_html._md.render(text)


@pytest.mark.parametrize(
    "text",
    ["1. x", "# x", "- x", "a  ", "&amp;", "<b>", "a\tb", "a\r\nb", "**b**", " a", "a `c`"],
)
def test_markdown_goes_to_markdown_it(text: str) -> None:
    assert event_html.plain_paragraphs(text) is None
    assert event_html.markdown(text) == event_html._md.render(text)
