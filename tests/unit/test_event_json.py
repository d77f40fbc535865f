"""An event's JSON is encoded once (``EventDraft.data_json``) and reused by the store, the hub
and the SSE stream: that text must stay what the model itself would write, follow the data it
encodes, and cope with what an agent's JSON may hold (lone surrogates)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfarm.domain import errors, events, models
from agentfarm.web import sse

TS = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

#: Any text but lone surrogates (which UTF-8 cannot hold: see the surrogate tests).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
DATA = st.dictionaries(TEXT, JSON_VALUES, max_size=5)


def event(data: dict[str, Any], **extra: Any) -> models.Event:
    return models.Event(run_id="0123456789ab", seq=7, type="agent.text", data=data, ts=TS, **extra)


@settings(max_examples=300)
@given(data=DATA, type_=TEXT)
def test_event_json_is_the_models_own_json(data: dict[str, Any], type_: str) -> None:
    e = models.Event(run_id="0123456789ab", seq=42, type=type_, data=data, ts=TS)
    assert events.event_json(e) == e.model_dump_json()
    assert json.loads(e.data_json()) == json.loads(json.dumps(data))


@settings(max_examples=300)
@given(text=TEXT)
def test_strings_are_escaped_as_json_escapes_them(text: str) -> None:
    # ``Redactor.found_in`` looks for a secret's forms, made with ``json.dumps``, in this text.
    assert models.EventDraft(type="t", data={"k": text}).data_json() == json.dumps(
        {"k": text}, ensure_ascii=False, separators=(",", ":")
    )


def test_the_encoding_is_made_once_and_follows_a_copy_with_other_data() -> None:
    draft = models.EventDraft(type="agent.text", data={"text": "before"}, ts=TS)
    first = draft.data_json()
    assert draft.data_json() is first  # kept, not encoded again
    copied = draft.model_copy(update={"data": {"text": "after"}})
    assert json.loads(copied.data_json()) == {"text": "after"}
    assert json.loads(draft.data_json()) == {"text": "before"}
    deep = draft.model_copy(deep=True)
    assert deep.data_json() == first


def test_a_kept_encoding_changes_neither_equality_nor_dumps() -> None:
    plain = event({"a": 1})
    encoded = event({"a": 1})
    encoded.data_json()
    assert plain == encoded
    assert encoded.model_dump() == plain.model_dump()
    assert encoded.model_dump_json() == plain.model_dump_json()
    assert "_data_json" not in repr(encoded)


def test_nan_and_infinity_are_null_as_in_the_models_json() -> None:
    e = event({"nan": float("nan"), "inf": float("inf"), "neg": float("-inf")})
    assert events.event_json(e) == e.model_dump_json()
    assert json.loads(e.data_json()) == {"nan": None, "inf": None, "neg": None}


def test_lone_surrogates_are_written_with_ascii_escapes() -> None:
    # json.loads takes "\ud800" from an agent's line; such a string has no UTF-8 form, so the
    # model's own JSON fails on it. The event is still stored and served.
    e = event({"text": "a\ud800b", "ok": "é"})
    with pytest.raises(ValueError, match="surrogates"):
        e.model_dump_json()
    text = events.event_json(e)
    assert text.isascii()
    assert json.loads(text)["data"] == {"text": "a\ud800b", "ok": "é"}
    odd_type = models.Event(run_id="r", seq=1, type="x\udfff", data={}, ts=TS)
    assert json.loads(events.event_json(odd_type))["type"] == "x\udfff"


def test_data_that_is_not_json_says_so() -> None:
    with pytest.raises(errors.InvalidInputError, match="not JSON"):
        models.EventDraft(type="x", data={"o": object()}).data_json()


def test_sse_frames_carry_each_event_whole_in_one_chunk() -> None:
    batch = [
        models.Event(run_id="r", seq=seq, type="agent.text", data={"text": text}, ts=TS)
        for seq, text in ((1, "one\nline\r\nbreaks"), (2, "é ünïcode"), (3, "a\ud800b"))
    ]
    chunk = sse.json_frames(batch)
    frames = chunk.decode().split("\n\n")
    assert frames[-1] == ""
    for frame, e in zip(frames[:-1], batch, strict=True):
        id_line, data_line = frame.split("\n")
        assert id_line == f"id: {e.seq}"
        assert data_line.startswith("data: ")
        assert json.loads(data_line[6:]) == json.loads(events.event_json(e))
        assert json.loads(data_line[6:])["data"] == e.data
