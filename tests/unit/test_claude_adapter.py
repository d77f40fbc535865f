"""The Claude Code adapter and parser, on lines recorded from the real CLI and on garbage."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfarm.agents import base, capping, claude, claude_stream, jsonlines
from agentfarm.agents.base import AgentAdapter, StreamParser
from agentfarm.domain import models
from tests.fakes import anthropic_api as fake

DATA = Path(__file__).resolve().parents[1] / "data" / "claude"
CASES = sorted(p.stem for p in DATA.glob("*.jsonl"))

INIT_KEYS = {"session_id", "model", "tools", "cwd", "permission_mode", "version"}
BLOCK_KEYS = {"message_id", "index", "text"}
CALL_KEYS = {"message_id", "index", "id", "name", "input"}
TOOL_RESULT_KEYS = {"id", "is_error", "content", "truncated", "size"}
RESULT_KEYS = {
    "subtype", "is_error", "result", "cost_usd", "usage", "num_turns", "duration_ms",
    "duration_api_ms", "permission_denials", "terminal_reason", "api_error_status",
}  # fmt: skip
USAGE_KEYS = set(models.Usage.model_fields)
UNPARSED_KEYS = {"line", "size", "truncated", "reason"}


def lines(case: str) -> list[bytes]:
    return (DATA / f"{case}.jsonl").read_bytes().splitlines()


def meta(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{case}.meta.json").read_text())
    return data


def feed(case: str) -> tuple[claude_stream.ClaudeStreamParser, list[models.EventDraft]]:
    parser = claude.ClaudeAdapter().new_parser()
    drafts = [d for line in lines(case) for d in parser.feed_stdout(line)]
    return parser, drafts


def of_type(drafts: list[models.EventDraft], kind: str) -> list[dict[str, Any]]:
    return [d.data for d in drafts if d.type == kind]


def one_line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def spec(**values: Any) -> models.AgentSpec:
    return models.AgentSpec.model_validate({"repo": "/src/repo", "prompt": "Fix it", **values})


# --- the adapter -------------------------------------------------------------------------


def test_adapter_and_parser_satisfy_the_protocols() -> None:
    adapter: AgentAdapter = claude.ClaudeAdapter()
    parser: StreamParser = adapter.new_parser()
    assert adapter.name == "claude"
    assert parser.summary.saw_result is False


def test_minimal_command() -> None:
    command = claude.ClaudeAdapter().build_command(spec(), binary="/opt/claude")
    assert command.argv == [
        "/opt/claude", "-p", "--output-format", "stream-json", "--verbose",
        "--input-format", "stream-json", "--replay-user-messages",
        "--permission-mode", "bypassPermissions",
    ]  # fmt: skip
    assert command.close_stdin_after == ("result",)
    assert command.replays and command.followup_window == 0.0
    assert command.stdin.endswith(b"\n") and command.stdin.count(b"\n") == 1
    assert json.loads(command.stdin) == {
        "type": "user",
        "message": {"role": "user", "content": "Fix it"},
    }
    assert command.env == {
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "2",
    }


def test_full_command_passes_each_tool_rule_as_its_own_flag() -> None:
    command = claude.ClaudeAdapter().build_command(
        spec(
            model="claude-sonnet-4-5",
            permission_mode="default",
            allowed_tools=["Write", "Bash(git *)"],
            disallowed_tools=["WebFetch"],
            max_turns=7,
            append_system_prompt="Be brief.\nReally.",
            env={"CLAUDE_CODE_MAX_RETRIES": "5", "FOO": "bar"},
            prompt='multi\nline "quoted" prompt',
        ),
        binary="claude",
    )
    assert command.argv[8:] == [
        "--permission-mode", "default",
        "--model", "claude-sonnet-4-5",
        "--allowedTools=Write", "--allowedTools=Bash(git *)",
        "--disallowedTools=WebFetch",
        "--max-turns", "7",
        "--append-system-prompt", "Be brief.\nReally.",
    ]  # fmt: skip
    assert command.env["CLAUDE_CODE_MAX_RETRIES"] == "5"
    assert command.env["FOO"] == "bar"
    assert command.stdin.count(b"\n") == 1
    assert json.loads(command.stdin)["message"]["content"] == 'multi\nline "quoted" prompt'


def test_credentials_are_names_not_values() -> None:
    adapter = claude.ClaudeAdapter()
    assert adapter.credential_names() == ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")
    command = adapter.build_command(spec(), binary="claude")
    assert not set(command.env) & set(adapter.credential_names())


def test_followup_and_interrupt_lines() -> None:
    adapter = claude.ClaudeAdapter()
    followup = adapter.followup("next\nstep")
    assert followup.endswith(b"\n") and followup.count(b"\n") == 1
    assert json.loads(followup)["message"] == {"role": "user", "content": "next\nstep"}
    interrupt = json.loads(adapter.interrupt())
    assert interrupt["type"] == "control_request"
    assert interrupt["request"] == {"subtype": "interrupt"}
    assert interrupt["request_id"]


# --- recorded runs -----------------------------------------------------------------------


def test_recordings_exist() -> None:
    expected = {"write-and-commit", "followup", "api-error", "max-turns", "interrupt", "blocks"}
    assert expected <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_recorded_lines_all_parse_into_known_shapes(case: str) -> None:
    _, drafts = feed(case)
    shapes = {
        "agent.init": INIT_KEYS,
        "agent.text": BLOCK_KEYS,
        "agent.thinking": BLOCK_KEYS,
        "agent.tool_call": CALL_KEYS,
        "agent.tool_result": TOOL_RESULT_KEYS,
        "agent.result": RESULT_KEYS,
    }
    assert drafts
    for draft in drafts:
        assert draft.type != "agent.unparsed", draft.data
        if draft.type in shapes:
            assert set(draft.data) == shapes[draft.type], draft.type
        else:
            assert draft.type == "agent.system"
            assert isinstance(draft.data["subtype"], str)
        json.dumps(draft.data, allow_nan=False)  # storable as is


@pytest.mark.parametrize("case", CASES)
def test_replay_is_deterministic(case: str) -> None:
    first_parser, first = feed(case)
    second_parser, second = feed(case)
    assert [(d.type, d.data) for d in first] == [(d.type, d.data) for d in second]
    assert first_parser.summary == second_parser.summary
    code = meta(case)["exit_code"]
    outcome = first_parser.finish(code, None, stopped=False)
    assert outcome == second_parser.finish(code, None, stopped=False)


def test_write_and_commit() -> None:
    parser, drafts = feed("write-and-commit")
    assert [d.type for d in drafts] == [
        "agent.init", "agent.tool_call", "agent.tool_result", "agent.tool_call",
        "agent.tool_result", "agent.text", "agent.result",
    ]  # fmt: skip
    init = drafts[0].data
    assert init["permission_mode"] == "bypassPermissions"
    assert init["version"] == "2.1.329"
    assert "Bash" in init["tools"] and "Write" in init["tools"]
    assert init["cwd"].endswith("/repo")
    write, commit = of_type(drafts, "agent.tool_call")
    assert write["name"] == "Write" and write["index"] == 0
    assert write["input"] == {"file_path": "hello.txt", "content": "Hello from agentfarm.\n"}
    assert "git commit" in commit["input"]["command"]
    results = of_type(drafts, "agent.tool_result")
    assert [r["id"] for r in results] == [write["id"], commit["id"]]
    assert all(r["is_error"] is False and r["truncated"] is False for r in results)
    assert results[1]["size"] == len(results[1]["content"])
    result = drafts[-1].data
    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["result"] == "I wrote hello.txt and committed it."
    assert result["num_turns"] == 3
    assert result["cost_usd"] > 0
    assert set(result["usage"]) == USAGE_KEYS
    assert result["terminal_reason"] == "completed"
    assert result["api_error_status"] is None
    summary = parser.summary
    assert summary.session_id == init["session_id"]
    assert summary.cost_usd == result["cost_usd"]
    assert summary.num_turns == 3
    assert summary.usage.input_tokens == result["usage"]["input_tokens"] > 0
    assert summary.saw_result and not summary.result_is_error and summary.result_error is None
    assert parser.finish(0, None, stopped=False) == base.Outcome(models.RunStatus.succeeded)


def test_followup_turns_accumulate() -> None:
    # Verified on the real CLI: total_cost_usd is cumulative per process, while usage and
    # num_turns cover each result's own turn.
    parser, drafts = feed("followup")
    first, second = of_type(drafts, "agent.result")
    assert len(of_type(drafts, "agent.init")) == 2
    assert second["cost_usd"] > first["cost_usd"] > 0
    assert parser.summary.cost_usd == second["cost_usd"]
    assert parser.summary.num_turns == first["num_turns"] + second["num_turns"]
    for key in USAGE_KEYS:
        total = first["usage"][key] + second["usage"][key]
        assert getattr(parser.summary.usage, key) == total
    assert parser.finish(0, None, stopped=False).status == models.RunStatus.succeeded


def test_api_error_fails_with_the_status() -> None:
    parser, drafts = feed("api-error")
    (result,) = of_type(drafts, "agent.result")
    assert result["is_error"] is True and result["api_error_status"] == 500
    assert result["terminal_reason"] == "api_error"
    outcome = parser.finish(meta("api-error")["exit_code"], None, stopped=False)
    assert outcome.status == models.RunStatus.failed
    assert outcome.error is not None
    assert outcome.error.startswith("The model API returned HTTP 500 (api_error): Internal server")
    assert outcome.error.endswith("Check ANTHROPIC_BASE_URL/credentials or retry.")
    assert parser.summary.result_error == outcome.error


def test_max_turns() -> None:
    parser, drafts = feed("max-turns")
    (result,) = of_type(drafts, "agent.result")
    assert result["subtype"] == "error_max_turns"
    assert "Reached maximum number of turns (2)" in result["result"]
    outcome = parser.finish(1, None, stopped=False)
    assert outcome.status == models.RunStatus.failed
    assert outcome.error == (
        "Reached max_turns (2) before finishing; raise max_turns or narrow the task."
    )


def test_blocks_of_one_message_are_indexed_in_order() -> None:
    _, drafts = feed("blocks")
    first = [d for d in drafts if d.type in ("agent.thinking", "agent.text", "agent.tool_call")]
    message_ids = {d.data["message_id"] for d in first[:3]}
    assert len(message_ids) == 1
    assert [(d.type, d.data["index"]) for d in first[:3]] == [
        ("agent.thinking", 0), ("agent.text", 1), ("agent.tool_call", 2),
    ]  # fmt: skip
    assert first[0].data["text"] == "The user wants me to look around first."
    assert first[3].data["index"] == 0 and first[3].data["message_id"] not in message_ids
    (tool_result,) = of_type(drafts, "agent.tool_result")
    assert tool_result["is_error"] is True and tool_result["content"] == "Exit code 3"
    assert {d["subtype"] for d in of_type(drafts, "agent.system")} == {"thinking_tokens"}


def test_interrupt_then_stop() -> None:
    parser, drafts = feed("interrupt")
    systems = of_type(drafts, "agent.system")
    assert "control_response" in [s["subtype"] for s in systems]
    assert {"subtype": "user_text", "text": "[Request interrupted by user for tool use]"} in systems
    assert parser.summary.result_is_error
    assert parser.finish(1, None, stopped=True) == base.Outcome(models.RunStatus.stopped)
    failed = parser.finish(1, None, stopped=False)
    assert failed.status == models.RunStatus.failed
    assert failed.error and "during execution" in failed.error


# --- crafted lines -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"type": "assistant", "message": {"id"', "invalid JSON"),
        (b"not json at all", "invalid JSON"),
        (b'[{"type": "result"}]', "a JSON list, not an object"),
        (b'"just a string"', "a JSON str, not an object"),
        (b'{"type": "result", "total_cost_usd": NaN}', "invalid JSON"),
        (b"\xff\xfe\x00garbage\x80", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),
    ],
)
def test_garbage_becomes_unparsed(line: bytes, reason: str) -> None:
    parser = claude_stream.ClaudeStreamParser()
    (draft,) = parser.feed_stdout(line)
    assert draft.type == "agent.unparsed"
    assert set(draft.data) == UNPARSED_KEYS
    assert draft.data["reason"].startswith(reason)
    assert draft.data["size"] == len(line)
    assert len(draft.data["line"].encode()) <= capping.MAX_STRING


def test_partial_recorded_line_is_unparsed_and_parsing_continues() -> None:
    parser = claude_stream.ClaudeStreamParser()
    recorded = lines("write-and-commit")
    (partial,) = parser.feed_stdout(recorded[1][:100])
    assert partial.type == "agent.unparsed"
    assert partial.data["line"] == recorded[1][:100].decode()
    assert parser.feed_stdout(recorded[2])[0].type == "agent.tool_result"


def test_blank_lines_are_ignored() -> None:
    parser = claude_stream.ClaudeStreamParser()
    assert parser.feed_stdout(b"") == [] and parser.feed_stdout(b"  \r") == []
    assert parser.feed_stderr(b"") == []


def test_five_megabyte_garbage_line() -> None:
    line = b"x" * (5 * 1024 * 1024)
    (draft,) = claude_stream.ClaudeStreamParser().feed_stdout(line)
    assert draft.type == "agent.unparsed"
    assert draft.data["truncated"] is True and draft.data["size"] == len(line)
    assert len(draft.data["line"].encode()) <= capping.MAX_STRING
    assert "truncated" in draft.data["line"][-60:]


def test_five_megabyte_tool_result_is_capped() -> None:
    content = "é" * (5 * 1024 * 1024 // 2)
    line = one_line(
        {
            "type": "user",
            "message": {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": content}],
            },
        }
    )
    assert len(line) > 5_000_000
    (draft,) = claude_stream.ClaudeStreamParser().feed_stdout(line)
    assert draft.type == "agent.tool_result"
    assert draft.data["truncated"] is True
    assert draft.data["size"] == len(content.encode())
    assert len(draft.data["content"].encode()) <= capping.MAX_STRING
    assert draft.data["content"].startswith("éé")
    assert "[truncated: " in draft.data["content"]


def test_tool_result_blocks_are_summarised() -> None:
    line = one_line(
        {
            "type": "user",
            "message": {
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "one"},
                            {"type": "image", "source": {"data": "AAAA"}},
                            {"type": "text", "text": "two"},
                        ],
                    }
                ]
            },
        }
    )
    (draft,) = claude_stream.ClaudeStreamParser().feed_stdout(line)
    assert draft.data == {
        "id": "t2",
        "is_error": True,
        "content": "one\n[image]\ntwo",
        "truncated": False,
        "size": 15,
    }


def test_oversized_tool_input_is_capped_with_a_marker() -> None:
    big = "a" * (200 * 1024)
    line = one_line(
        {
            "type": "assistant",
            "message": {
                "id": "m1",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "Write", "input": {"content": big}}
                ],
            },
        }
    )
    (draft,) = claude_stream.ClaudeStreamParser().feed_stdout(line)
    assert draft.type == "agent.tool_call"
    capped = draft.data["input"]["content"]
    assert len(capped.encode()) <= capping.MAX_STRING
    assert capped.endswith(f"[truncated: {len(big)} bytes in all]")


def test_unknown_types_become_system_events() -> None:
    parser = claude_stream.ClaudeStreamParser()
    (unknown,) = parser.feed_stdout(one_line({"type": "brand_new", "value": 3, "huge": "x" * 5000}))
    assert unknown.type == "agent.system"
    assert unknown.data["subtype"] == "brand_new" and unknown.data["value"] == 3
    assert len(unknown.data["huge"]) <= jsonlines.MAX_SMALL_FIELD
    retry = {
        "type": "system",
        "subtype": "api_retry",
        "attempt": 1,
        "max_retries": 2,
        "retry_delay_ms": 500,
        "error_status": 529,
        "session_id": "s",
        "uuid": "u",
    }
    (draft,) = parser.feed_stdout(one_line(retry))
    assert draft.data == {
        "subtype": "api_retry",
        "attempt": 1,
        "max_retries": 2,
        "retry_delay_ms": 500,
        "error_status": 529,
    }
    (no_type,) = parser.feed_stdout(b'{"hello": "world"}')
    assert no_type.type == "agent.system" and no_type.data["subtype"] == "unknown"


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "assistant"},
        {"type": "assistant", "message": None},
        {"type": "assistant", "message": {"id": 5, "content": {"type": "text"}}},
        {"type": "assistant", "message": {"content": [None, 3, {"type": "text", "text": 7}]}},
        {"type": "assistant", "message": {"content": [{"type": "tool_use", "input": "s"}]}},
        {"type": "user", "message": {"content": [{"type": "tool_result", "content": 12}]}},
        {"type": "user", "message": "hi"},
        {"type": "result", "usage": "lots", "num_turns": "3", "total_cost_usd": "1"},
        {"type": "result", "usage": {"input_tokens": -4, "output_tokens": True}, "errors": 5},
        {"type": "system", "subtype": "init", "tools": "Bash", "model": 3},
        {"type": "system", "subtype": ["weird"]},
        {"type": None},
    ],
)
def test_malformed_known_types_never_crash(obj: dict[str, Any]) -> None:
    parser = claude_stream.ClaudeStreamParser()
    drafts = parser.feed_stdout(one_line(obj))
    for draft in drafts:
        json.dumps(draft.data, allow_nan=False)
    parser.finish(0, None, stopped=False)


def test_stderr_lines_are_events_and_feed_the_failure_sentence() -> None:
    parser = claude_stream.ClaudeStreamParser()
    for number in range(8):
        (draft,) = parser.feed_stderr(f"problem {number}\n".encode())
        assert draft == models.EventDraft(
            type="agent.stderr", data={"line": f"problem {number}"}, ts=draft.ts
        )
    outcome = parser.finish(1, None, stopped=False)
    assert outcome.status == models.RunStatus.failed
    assert outcome.error == (
        "The agent exited with code 1 without reporting a result. Last stderr: "
        "problem 3 | problem 4 | problem 5 | problem 6 | problem 7"
    )


def test_stderr_garbage_is_decoded_with_replacement() -> None:
    (draft,) = claude_stream.ClaudeStreamParser().feed_stderr(b"bad \xff byte")
    assert draft.data == {"line": "bad \ufffd byte"}


# --- outcomes ----------------------------------------------------------------------------


def test_killed_without_result_names_the_signal_and_the_memory_limit() -> None:
    parser, _ = feed("write-and-commit")
    fresh = claude_stream.ClaudeStreamParser()
    for line in lines("write-and-commit")[:-1]:  # everything but the result
        fresh.feed_stdout(line)
    outcome = fresh.finish(None, signal.SIGKILL, stopped=False)
    assert outcome.status == models.RunStatus.failed
    assert outcome.error and outcome.error.startswith("The agent was killed by SIGKILL")
    assert "memory" in outcome.error
    # A shell-style status (128 + n) names the signal too.
    term = fresh.finish(143, None, stopped=False)
    assert term.error == "The agent was killed by SIGTERM before it reported a result."
    # The result was seen: a late kill does not undo finished work.
    assert parser.finish(None, signal.SIGKILL, stopped=False).status == models.RunStatus.succeeded


def test_exit_zero_without_result_fails() -> None:
    outcome = claude_stream.ClaudeStreamParser().finish(0, None, stopped=False)
    assert outcome == base.Outcome(
        models.RunStatus.failed, "The agent exited with code 0 without reporting a result."
    )


def test_lost_and_stopped() -> None:
    parser, _ = feed("write-and-commit")
    assert parser.finish(None, None, stopped=True).status == models.RunStatus.stopped
    lost = claude_stream.ClaudeStreamParser().finish(None, None, stopped=False, lost=True)
    assert lost.status == models.RunStatus.lost
    assert lost.error and lost.error.endswith(".")


def result_line(**fields: Any) -> bytes:
    base: dict[str, Any] = {"type": "result", "subtype": "success", "is_error": False}
    return one_line({**base, **fields})


def test_latest_result_decides_and_a_later_success_clears_the_error() -> None:
    parser = claude_stream.ClaudeStreamParser()
    parser.feed_stdout(
        result_line(is_error=True, api_error_status=401, result="API Error: 401 bad key")
    )
    assert parser.summary.result_error == (
        "The model API returned HTTP 401: bad key. "
        "Check the credentials (ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN)."
    )
    parser.feed_stdout(result_line(result="fine now"))
    assert parser.summary.result_is_error is False and parser.summary.result_error is None
    assert parser.finish(0, None, stopped=False).status == models.RunStatus.succeeded


def test_cost_of_a_restarted_process_adds_up() -> None:
    # A resumed agent is a new process whose cumulative cost starts again from zero.
    parser = claude_stream.ClaudeStreamParser()
    parser.feed_stdout(result_line(total_cost_usd=0.5, num_turns=2))
    parser.feed_stdout(result_line(total_cost_usd=0.75, num_turns=1))
    parser.feed_stdout(result_line(total_cost_usd=0.25, num_turns=1))
    assert parser.summary.cost_usd == pytest.approx(1.0)
    assert parser.summary.num_turns == 4


def test_overloaded_and_other_errors_have_hints() -> None:
    parser = claude_stream.ClaudeStreamParser()
    parser.feed_stdout(
        result_line(is_error=True, api_error_status=529, api_error_type="overloaded_error")
    )
    assert parser.summary.result_error == (
        "The model API returned HTTP 529 (overloaded_error): no message. "
        "The API is rate-limiting or overloaded; retry later."
    )
    parser.feed_stdout(result_line(subtype="error_max_budget_usd", is_error=True))
    assert parser.summary.result_error and "budget" in parser.summary.result_error


# --- fuzz --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "subtype", "message", "content", "id", "text", "usage", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
known_types = st.sampled_from(["system", "assistant", "user", "result", "control_response", "z"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_random_bytes(chunks: list[bytes]) -> None:
    parser = claude_stream.ClaudeStreamParser()
    for chunk in chunks:
        for draft in parser.feed_stdout(chunk) + parser.feed_stderr(chunk):
            json.dumps(draft.data, allow_nan=False)
    assert parser.finish(1, None, stopped=False).status == models.RunStatus.failed


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(known_types, st.dictionaries(st.text(max_size=10), json_values, max_size=5)),
        max_size=6,
    )
)
def test_fuzz_shaped_objects_are_deterministic(objs: list[tuple[str, dict[str, Any]]]) -> None:
    raw = [one_line({**body, "type": kind}) for kind, body in objs]
    replays = []
    for _ in range(2):
        parser = claude_stream.ClaudeStreamParser()
        drafts = [d for line in raw for d in parser.feed_stdout(line)]
        for draft in drafts:
            json.dumps(draft.data, allow_nan=False)
        replays.append(([(d.type, d.data) for d in drafts], parser.finish(0, None, stopped=False)))
    assert replays[0] == replays[1]


# --- the fake Messages API the integration tests run the CLI against ----------------------


def sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in body.strip().split("\n\n"):
        name, data = chunk.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_fake_selects_the_turn_by_counting_assistant_messages() -> None:
    messages = [
        {"role": "user", "content": "old [scenario:hello]"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": [{"type": "text", "text": f"{fake.marker('sleep')} go"}]},
        {"role": "system", "content": "reminder"},
        {"role": "assistant", "content": []},
        {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]},
        {"role": "assistant", "content": []},
    ]
    assert fake.select_turn(messages) == ("sleep", None, 2)
    assert fake.select_turn([{"role": "user", "content": "[scenario:many-events:7]"}]) == (
        "many-events",
        "7",
        0,
    )
    assert fake.select_turn([{"role": "user", "content": "no marker"}]) == (None, None, 0)


def test_fake_streams_messages_api_events(fake_anthropic: fake.FakeAnthropic) -> None:
    marker = fake_anthropic.register(
        "unit-stream",
        [fake.turn(fake.Text("hi"), fake.ToolUse("Bash", {"command": "echo " + "x" * 50}))],
    )
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": marker}]}
    with httpx.Client(base_url=fake_anthropic.base_url) as client:
        response = client.post("/v1/messages?beta=true", json=body)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.text)
        names = [name for name, _ in events]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        assert all(data["type"] == name for name, data in events)
        deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
        assert "".join(d["text"] for d in deltas if d["type"] == "text_delta") == "hi"
        tool_json = "".join(d["partial_json"] for d in deltas if d["type"] == "input_json_delta")
        assert json.loads(tool_json) == {"command": "echo " + "x" * 50}
        stop = next(d for n, d in events if n == "message_delta")
        assert stop["delta"]["stop_reason"] == "tool_use" and stop["usage"]["output_tokens"] > 0
        assert client.head("/api/hello").status_code == 200
        missing = client.get("/v1/models")
        assert missing.status_code == 404 and missing.json()["type"] == "error"
        error = client.post(
            "/v1/messages",
            json={**body, "messages": [{"role": "user", "content": fake.marker("api-error")}]},
        )
        assert error.status_code == 500
        assert error.json()["error"] == {
            "type": "api_error",
            "message": "Internal server error (scripted)",
        }
    (recorded,) = fake_anthropic.requests_for("unit-stream")
    assert recorded.query == "beta=true" and recorded.turn == 0 and recorded.body == body


def test_the_echo_of_a_sent_message_makes_no_event_and_the_window_reaches_the_command() -> None:
    parser = claude.ClaudeAdapter().new_parser()
    replay = {"type": "user", "message": {"role": "user", "content": "hi"}, "isReplay": True}
    assert parser.feed_stdout(json.dumps(replay).encode()) == []
    command = claude.ClaudeAdapter().build_command(spec(followup_window_seconds=90))
    assert command.followup_window == 90.0 and command.followup is not None
