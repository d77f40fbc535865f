"""Detecting the model's usage limit: Claude Code's rate_limit_event, the sentence forms, and
the parser's events and summary; the watchdog's phases."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agentfarm.agents import base, claude, usage_limit
from agentfarm.domain import models
from agentfarm.supervisor import events, watchdog
from tests.unit.conftest import make_settings

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
LA = ZoneInfo("America/Los_Angeles")


def stamp(*args: int, tz: Any = UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def event(status: str, resets_at: Any = None, **extra: Any) -> dict[str, Any]:
    info = {"status": status, "rateLimitType": "five_hour", **extra}
    if resets_at is not None:
        info["resetsAt"] = resets_at
    return {"type": "rate_limit_event", "rate_limit_info": info, "session_id": "s"}


def test_the_event_gives_status_reset_and_window() -> None:
    limit = usage_limit.from_event(event("rejected", 1796042736))
    assert limit == usage_limit.Limit("rejected", 1796042736.0, "five_hour", None, "event")
    assert limit.rejected


def test_a_reset_above_1e12_is_in_milliseconds() -> None:
    limit = usage_limit.from_event(event("rejected", 1796042736500))
    assert limit is not None and limit.resets_at == pytest.approx(1796042736.5)


@pytest.mark.parametrize(
    "info",
    [{}, {"status": "weird"}, {"status": None}, "rejected"],
)
def test_an_event_it_does_not_understand_is_not_a_limit(info: Any) -> None:
    assert usage_limit.from_event({"type": "rate_limit_event", "rate_limit_info": info}) is None


@pytest.mark.parametrize("bad", [True, -5, "1796042736", 0])
def test_a_reset_that_is_not_a_time_is_left_out(bad: Any) -> None:
    limit = usage_limit.from_event(event("rejected", bad))
    assert limit is not None and limit.resets_at is None


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("You've hit your 5-hour limit · resets 10:10am (UTC)", stamp(2026, 11, 30, 10, 10)),
        ("Claude AI usage limit reached|1796042846", 1796042846.0),
        ("Claude AI usage limit reached|1796042846000", 1796042846.0),
        ("5-hour limit reached ∙ resets 3am", stamp(2026, 12, 1, 3, 0)),
        ("5-hour limit reached ∙ resets 8am", stamp(2026, 12, 1, 8, 0)),  # passed today
        (
            "You've hit your limit · resets 4pm (America/Los_Angeles)",
            stamp(2026, 11, 30, 16, 0, tz=LA),
        ),
        (
            "You've hit your limit · resets Apr 23 at 4pm (America/Los_Angeles)",
            stamp(2027, 4, 23, 16, 0, tz=LA),
        ),
        ("You've hit your weekly limit · resets Dec 3, 9am (UTC)", stamp(2026, 12, 3, 9, 0)),
        ("You've hit your limit · resets 4pm (Not/AZone)", stamp(2026, 11, 30, 16, 0)),
        ("Claude AI usage limit reached", None),
    ],
)
def test_the_sentence_forms(sentence: str, expected: float | None) -> None:
    limit = usage_limit.from_text(sentence, NOW)
    assert limit is not None and limit.rejected and limit.source == "text"
    assert limit.resets_at == expected


@pytest.mark.parametrize("text", ["All done.", "I will reset the counter at 10am", ""])
def test_ordinary_text_is_not_a_limit(text: str) -> None:
    assert usage_limit.from_text(text, NOW) is None


def feed(*objs: dict[str, Any]) -> tuple[base.StreamParser, list[models.EventDraft]]:
    parser = claude.ClaudeAdapter().new_parser()
    drafts: list[models.EventDraft] = []
    for obj in objs:
        drafts += parser.feed_stdout(json.dumps(obj).encode())
    return parser, drafts


def result(text: str, *, is_error: bool, status: int | None = 429) -> dict[str, Any]:
    return {
        "type": "result", "subtype": "success", "is_error": is_error, "result": text,
        "api_error_status": status, "terminal_reason": "api_error" if is_error else None,
        "session_id": "s",
    }  # fmt: skip


def test_the_parser_turns_the_event_into_agent_rate_limit_and_keeps_the_limit() -> None:
    parser, drafts = feed(event("allowed"), event("rejected", 1796042736))
    # A plain "allowed" (one with every answer) makes no event.
    assert [d.type for d in drafts] == [models.EventType.agent_rate_limit]
    assert drafts[0].data == {
        "status": "rejected", "resets_at": 1796042736.0, "limit_type": "five_hour",
        "utilization": None, "source": "event",
    }  # fmt: skip
    assert parser.summary.usage_limit is not None
    assert parser.summary.usage_limit.resets_at == 1796042736.0


def test_the_sentence_counts_only_in_a_result_that_reports_an_error() -> None:
    sentence = "Claude AI usage limit reached|1796042846"
    parser, drafts = feed(result(sentence, is_error=True))
    assert [d.type for d in drafts] == [models.EventType.agent_rate_limit, "agent.result"]
    assert parser.summary.usage_limit is not None
    assert parser.summary.usage_limit.source == "text"
    # The agent may well write the sentence itself: not a limit.
    parser, drafts = feed(result(sentence, is_error=False, status=None))
    assert parser.summary.usage_limit is None
    # Another API error that happens to quote it: not a limit either.
    parser, _ = feed(result(sentence, is_error=True, status=500))
    assert parser.summary.usage_limit is None


def test_the_event_wins_over_the_sentence() -> None:
    parser, drafts = feed(
        event("rejected", 1796042736),
        result("You've hit your 5-hour limit · resets 10:10am (UTC)", is_error=True),
    )
    assert [d.data["source"] for d in drafts if d.type == "agent.rate_limit"] == ["event"]
    assert parser.summary.usage_limit is not None
    assert parser.summary.usage_limit.resets_at == 1796042736.0


def test_a_warning_is_kept_until_the_limit_is_allowed_again() -> None:
    parser, _ = feed(event("allowed_warning", 1796042736, utilization=0.92))
    assert parser.summary.limit_warning is not None
    fields = events.summary_fields(parser)
    assert fields["warning"].startswith("the model's five-hour limit is close (92% used)")
    parser.feed_stdout(json.dumps(event("allowed")).encode())
    assert parser.summary.limit_warning is None
    assert events.summary_fields(parser)["warning"] is None


def test_a_resumed_process_adds_to_the_figures_of_the_ones_before() -> None:
    parser, _ = feed(
        {"type": "result", "subtype": "success", "is_error": False, "result": "ok",
         "total_cost_usd": 0.25, "num_turns": 2, "usage": {"input_tokens": 7},
         "session_id": "s"}
    )  # fmt: skip
    before = models.Continuation(
        base_cost_usd=1.0, base_usage=models.Usage(input_tokens=3), base_num_turns=4
    )
    fields = events.summary_fields(parser, base=before)
    assert fields["cost_usd"] == pytest.approx(1.25)
    assert fields["num_turns"] == 6
    assert fields["usage"].input_tokens == 10


def test_resume_command_continues_the_session_with_the_prompt() -> None:
    spec = models.AgentSpec(repo="/r", prompt="first prompt", model="opus")
    adapter = claude.ClaudeAdapter()
    command = adapter.resume_command(spec, "sess-1", "go on")
    assert list(command.argv) == [*adapter.build_command(spec).argv, "--resume", "sess-1"]
    assert command.stdin == claude.user_line("go on")
    assert isinstance(adapter, base.Resumable)


# --- the watchdog's phases ------------------------------------------------------------------


def draft(kind: str, **data: Any) -> models.EventDraft:
    return models.EventDraft(type=kind, data=data)


def test_the_phase_follows_tool_calls_their_results_and_the_result() -> None:
    tracker = watchdog.Tracker()
    assert tracker.phase is watchdog.Phase.starting  # the agent printed nothing yet
    tracker.feed([draft("agent.init")])
    assert tracker.phase is watchdog.Phase.model  # a request is out
    tracker.feed([draft("agent.tool_call", id="a"), draft("agent.tool_call", id="b")])
    assert tracker.phase is watchdog.Phase.tool
    tracker.feed([draft("agent.tool_result", id="a")])
    assert tracker.phase is watchdog.Phase.tool  # b still runs
    tracker.feed([draft("agent.tool_result", id="b")])
    assert tracker.phase is watchdog.Phase.model  # the model has the results now
    tracker.feed([draft("agent.result")])
    assert tracker.phase is watchdog.Phase.result
    tracker.feed([draft("agent.stderr", line="x"), draft("agent.rate_limit", status="allowed")])
    assert tracker.phase is watchdog.Phase.result
    tracker.feed([draft("agent.text", text="more")])
    assert tracker.phase is watchdog.Phase.model


def test_limits_come_from_the_config_then_the_server(tmp_path: Any) -> None:
    settings = make_settings(
        tmp_path, model_stall_seconds=300, tool_quiet_seconds=3600, result_grace_seconds=0
    )
    plain = watchdog.Limits.of(settings, models.AgentSpec(repo="/r"))
    assert (plain.model, plain.tool, plain.result, plain.stall_resumes) == (300, 3600, None, 1)
    assert plain.quiet(watchdog.Phase.starting) == 3600  # the longer of the two
    own = models.AgentSpec(repo="/r", watchdog={"tool_quiet_seconds": 0, "stall_resumes": 3})
    mine = watchdog.Limits.of(settings, own)
    assert (mine.model, mine.tool, mine.stall_resumes) == (300, None, 3)
    assert mine.quiet(watchdog.Phase.tool) is None
    assert mine.quiet(watchdog.Phase.starting) == 300


def test_a_config_with_an_unknown_watchdog_field_is_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        models.AgentSpec(repo="/r", watchdog={"model_stall": 5})
