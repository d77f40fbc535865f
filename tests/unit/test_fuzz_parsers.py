"""Fuzzing of what agents and forges send (hypothesis): the stream parsers take any bytes
without raising and keep what they cannot read as ``agent.unparsed``; the webhook parser
answers any headers and body with a Trigger, None or InvalidDeliveryError, nothing else."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfarm.agents.claude_stream import ClaudeStreamParser
from agentfarm.agents.codex_stream import CodexStreamParser
from agentfarm.agents.jsonlines import JsonLinesParser
from agentfarm.domain import egress, launch, models, spec_schema
from agentfarm.pipeline import branches
from agentfarm.pipeline.forges import webhooks

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Any JSON value, huge numbers and odd strings included.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)

CLAUDE_TYPES = ["system", "assistant", "user", "result", "rate_limit_event", "stream_event"]
CODEX_TYPES = [
    "thread.started", "turn.started", "turn.completed", "turn.failed", "item.started",
    "item.updated", "item.completed", "error",
]  # fmt: skip
FIELDS = [
    "type", "subtype", "message", "content", "usage", "session_id", "result", "is_error",
    "total_cost_usd", "num_turns", "item", "id", "text", "command", "exit_code", "error",
    "thread_id", "aggregated_output", "status", "rate_limit_info", "duration_ms", "model",
]  # fmt: skip


def shaped(types: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects that look like the agent's lines, with a wrong type in any field."""
    return st.builds(
        lambda kind, extra: {"type": kind, **extra},
        st.sampled_from(types),
        st.dictionaries(st.sampled_from(FIELDS[1:]), json_values, max_size=6),
    )


def lines(types: list[str]) -> st.SearchStrategy[bytes]:
    encoded = shaped(types).map(lambda obj: json.dumps(obj).encode())
    return st.one_of(
        encoded,
        encoded.flatmap(lambda line: st.integers(0, len(line)).map(lambda n: line[:n])),
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
        st.just(b'{"type": "result", "total_cost_usd": 1e999}'),
        st.just(b'{"type": "result", "num_turns": ' + b"9" * 5000 + b"}"),
    )


def check_stream(parser: JsonLinesParser, feed: list[bytes]) -> None:
    for line in feed:
        events = parser.feed_stdout(line)
        for event in events:
            assert isinstance(event, models.EventDraft)
            json.dumps(event.data)  # storable
        if line.strip():
            try:
                parsed = json.loads(line)
            except (ValueError, RecursionError):
                parsed = None
            if not isinstance(parsed, dict):
                assert [e.type for e in events] == [models.EventType.agent_unparsed], line
        parser.feed_stderr(line)
    parser.finish(0, None, stopped=False)
    parser.finish(None, 9, stopped=False, lost=True)


@FUZZ
@given(st.lists(lines(CLAUDE_TYPES), max_size=8))
def test_the_claude_parser_takes_any_lines(feed: list[bytes]) -> None:
    check_stream(ClaudeStreamParser(), feed)


@FUZZ
@given(st.lists(lines(CODEX_TYPES), max_size=8))
def test_the_codex_parser_takes_any_lines(feed: list[bytes]) -> None:
    check_stream(CodexStreamParser(), feed)


def test_a_nesting_bomb_is_unparsed_not_a_crash() -> None:
    bomb = b"[" * 200_000 + b"]" * 200_000
    for parser in (ClaudeStreamParser(), CodexStreamParser()):
        (event,) = parser.feed_stdout(bomb)
        assert event.type == models.EventType.agent_unparsed


HEADER_NAMES = [
    "X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256", "X-Forgejo-Event",
    "X-Forgejo-Delivery", "X-Gitea-Event", "X-Gitea-Delivery", "X-Gogs-Event", "Content-Type",
]  # fmt: skip
EVENTS = ["issues", "issue_label", "issue_comment", "pull_request_comment", "status",
          "check_run", "ping", "push", ""]  # fmt: skip
PAYLOAD_KEYS = ["action", "label", "labels", "issue", "comment", "repository", "sender",
                "pull_request", "sha", "state", "context", "check_run", "number"]  # fmt: skip

headers_st = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.text(max_size=20),
    st.sampled_from(EVENTS) | st.text(max_size=300),
    max_size=6,
)
payloads = st.dictionaries(st.sampled_from(PAYLOAD_KEYS), json_values, max_size=8).map(
    lambda obj: {**obj, "repository": obj.get("repository", {"full_name": "o/r"})}
)
bodies = st.one_of(
    payloads.map(lambda obj: json.dumps(obj).encode()),
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)


@FUZZ
@given(
    st.sampled_from(["github", "forgejo"]),
    headers_st,
    bodies,
    st.none() | st.lists(st.text(max_size=10), max_size=3),
)
def test_the_webhook_parser_answers_a_trigger_none_or_invalid_delivery(
    kind: Any, headers: dict[str, str], body: bytes, known: list[str] | None
) -> None:
    try:
        trigger = webhooks.parse_delivery(
            kind, headers, body, trigger_label="agentfarm", known_labels=known
        )
    except webhooks.InvalidDeliveryError:
        return
    assert trigger is None or isinstance(trigger, webhooks.Trigger)
    webhooks.verify_signature(kind, "secret", body, headers)


@FUZZ
@given(st.sampled_from(["github", "forgejo"]), headers_st, bodies)
def test_every_delivery_with_event_headers_is_read_or_refused(
    kind: Any, headers: dict[str, str], body: bytes
) -> None:
    prefix = "X-GitHub-" if kind == "github" else "X-Forgejo-"
    sent = {**headers, prefix + "Event": "issues", prefix + "Delivery": "d-1"}
    with contextlib.suppress(webhooks.InvalidDeliveryError):
        webhooks.parse_delivery(kind, sent, body, trigger_label="agentfarm")


@FUZZ
@given(st.integers(1, 10**9), st.text(max_size=300))
def test_pipeline_branch_names_are_safe_whatever_the_issue_title(number: int, title: str) -> None:
    name = branches.issue_branch(number, title, lambda _: False)
    assert launch.valid_branch(name) and branches.valid_branch(name), name
    assert re.match(spec_schema.BRANCH_PATTERN, name), name


@FUZZ
@given(st.from_regex(egress.ENTRY_PATTERN))
def test_egress_entries_valid_by_the_schema_are_taken(entry: str) -> None:
    if len(entry.strip().rstrip(".")) <= 253:  # the one rule left to the server
        assert egress.parse_entry(entry)
