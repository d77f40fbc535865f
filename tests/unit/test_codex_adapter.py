"""The Codex CLI adapter and parser, on lines recorded from the real CLI and on garbage."""

from __future__ import annotations

import json
import signal
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfarm.agents import base, codex, codex_stream
from agentfarm.agents.base import AgentAdapter, StreamParser
from agentfarm.domain import models
from agentfarm.supervisor import watchdog

DATA = Path(__file__).resolve().parents[1] / "data" / "codex"
CASES = sorted(p.stem for p in DATA.glob("*.jsonl"))
RESULT_KEYS = {
    "subtype", "is_error", "result", "cost_usd", "usage", "num_turns", "duration_ms",
    "duration_api_ms", "permission_denials", "terminal_reason", "api_error_status",
}  # fmt: skip
INIT_KEYS = {"session_id", "model", "tools", "cwd", "permission_mode", "version"}


def lines(case: str) -> list[bytes]:
    return (DATA / f"{case}.jsonl").read_bytes().splitlines()


def meta(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{case}.meta.json").read_text())
    return data


def feed(case: str) -> tuple[codex_stream.CodexStreamParser, list[models.EventDraft]]:
    parser = codex.CodexAdapter().new_parser()
    return parser, [d for line in lines(case) for d in parser.feed_stdout(line)]


def of_type(drafts: list[models.EventDraft], kind: str) -> list[dict[str, Any]]:
    return [d.data for d in drafts if d.type == kind]


def spec(**values: Any) -> models.AgentSpec:
    return models.AgentSpec.model_validate({"repo": "/src/repo", "prompt": "Fix it", **values})


def settings_of(argv: list[str]) -> dict[str, Any]:
    pairs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-c"]
    return {k: tomllib.loads(f"v = {v}")["v"] for k, v in (p.split("=", 1) for p in pairs)}


# --- the adapter -------------------------------------------------------------------------


def test_adapter_and_parser_satisfy_the_protocols() -> None:
    adapter: AgentAdapter = codex.CodexAdapter()
    parser: StreamParser = adapter.new_parser()
    assert adapter.name == "codex" and adapter.credential_names() == ("CODEX_API_KEY",)
    assert parser.summary.saw_result is False


def test_minimal_turn_uses_the_builtin_provider() -> None:
    argv = codex.CodexAdapter().exec_argv(spec(), binary="/opt/codex")
    assert argv[:5] == [
        "/opt/codex", "exec", "--json", "--dangerously-bypass-approvals-and-sandbox",
        "--skip-git-repo-check",
    ]  # fmt: skip
    assert argv[-2:] == ["--", "-"]  # the prompt comes on stdin
    assert settings_of(argv) == {
        "check_for_update_on_startup": False,
        "analytics.enabled": False,
        "features.plugins": False,
    }


def test_the_run_command_is_the_driver_with_the_prompt_on_stdin() -> None:
    adapter = codex.CodexAdapter()
    command = adapter.build_command(spec(env={"FOO": "bar"}), binary="/opt/codex")
    # The driver runs `<binary> exec <flags> -- <text>` per turn: argv carries the flags only.
    assert list(command.argv) == ["/opt/codex", *codex.turn_flags(spec(), None)]
    assert command.runner[:4] == ("python3", "-S", "-I", "-c")
    assert "class Driver" in command.runner[4]
    assert json.loads(command.stdin) == {"text": "Fix it"}
    assert command.followup is not None
    assert json.loads(command.followup.encode("more ☃\n")) == {"text": "more ☃\n"}
    assert command.close_stdin_after == ("turn.completed", "turn.failed")
    assert command.interrupt == b"" and command.env == {"FOO": "bar"}
    assert command.with_program("/real/codex", "/usr/bin/python3")[:5] == [
        "/usr/bin/python3", "-S", "-I", "-c", command.runner[4],
    ]  # fmt: skip
    assert command.with_program("/real/codex")[5:7] == ["/real/codex", "--json"]


def test_base_url_defines_a_provider_whose_key_comes_from_the_environment() -> None:
    command = codex.CodexAdapter().build_command(
        spec(
            model="gpt-5-codex",
            append_system_prompt='Be brief.\n"Really" ☃ 😀',
            env={"FOO": "bar"},
            prompt="-a prompt that looks like a flag",
        ),
        base_url="http://127.0.0.1:9/v1",
    )
    argv = list(command.argv)
    assert argv[argv.index("--model") + 1] == "gpt-5-codex"
    values = settings_of(argv)
    assert values["model_provider"] == "agentfarm"
    assert values["model_providers.agentfarm.base_url"] == "http://127.0.0.1:9/v1"
    assert values["model_providers.agentfarm.env_key"] == "CODEX_API_KEY"
    assert values["model_providers.agentfarm.wire_api"] == "responses"
    assert values["developer_instructions"] == 'Be brief.\n"Really" ☃ 😀'
    assert json.loads(command.stdin)["text"] == "-a prompt that looks like a flag"
    assert command.env == {"FOO": "bar"}
    assert not any("sk-" in arg for arg in argv)


def test_resume_passes_the_flags_again_then_thread_and_prompt() -> None:
    argv = codex.CodexAdapter().exec_argv(spec(model="m"), resume_thread="01a2-thread")
    assert argv[1:3] == ["exec", "resume"]
    assert "--dangerously-bypass-approvals-and-sandbox" in argv
    assert argv[-3:] == ["--", "01a2-thread", "-"]


def test_ignores_what_codex_has_no_flag_for() -> None:
    plain = codex.CodexAdapter().build_command(spec())
    other = codex.CodexAdapter().build_command(
        spec(permission_mode="default", allowed_tools=["Write"], max_turns=3)
    )
    assert plain.argv == other.argv


def test_a_long_prompt_goes_on_stdin_not_on_the_command_line() -> None:
    long = "x" * 190_000  # over Linux's 128 KiB limit for one argument
    command = codex.CodexAdapter().build_command(spec(prompt=long))
    assert json.loads(command.stdin) == {"text": long}
    assert all(len(arg) < 10_000 for arg in command.argv)


# --- the parser, on recorded lines -------------------------------------------------------


def test_write_and_commit() -> None:
    parser, drafts = feed("write-and-commit")
    assert [d.type for d in drafts] == [
        "agent.init", "agent.system", "agent.system",
        "agent.tool_call", "agent.tool_result", "agent.tool_call", "agent.tool_result",
        "agent.text", "agent.result",
    ]  # fmt: skip
    init = of_type(drafts, "agent.init")[0]
    assert set(init) == INIT_KEYS and init["session_id"] == parser.summary.session_id
    warning = of_type(drafts, "agent.system")[0]
    assert warning["subtype"] == "warning" and "metadata" in warning["message"]
    calls, results = of_type(drafts, "agent.tool_call"), of_type(drafts, "agent.tool_result")
    assert calls[0]["name"] == "command" and "hello.txt" in calls[0]["input"]["command"]
    assert [r["id"] for r in results] == [c["id"] for c in calls]
    assert [(r["is_error"], r["exit_code"]) for r in results] == [(False, 0), (False, 0)]
    assert of_type(drafts, "agent.text")[0]["text"] == "I wrote hello.txt and committed it."
    result = of_type(drafts, "agent.result")[0]
    assert set(result) == RESULT_KEYS
    assert result["result"] == "I wrote hello.txt and committed it." and not result["is_error"]
    usage = parser.summary.usage
    assert usage.input_tokens == 16130 and usage.output_tokens == 152
    assert parser.summary.num_turns == 1 and parser.summary.cost_usd is None
    assert parser.finish(meta("write-and-commit")["exit_code"], None, stopped=False) == (
        base.Outcome(models.RunStatus.succeeded)
    )


def test_failing_command_is_a_tool_error_not_a_failed_run() -> None:
    parser, drafts = feed("failing-command")
    result = of_type(drafts, "agent.tool_result")[0]
    assert result["is_error"] and result["exit_code"] == 3 and result["status"] == "failed"
    assert parser.finish(0, None, stopped=False).status == models.RunStatus.succeeded


@pytest.mark.parametrize(
    ("case", "message"),
    [("api-error", "Bad request (scripted) (invalid_request)"), ("stream-error", "Model failed")],
)
def test_api_errors_fail_the_run_with_the_message(case: str, message: str) -> None:
    parser, drafts = feed(case)
    result = of_type(drafts, "agent.result")[0]
    assert result["is_error"] and result["subtype"] == "error_turn_failed"
    assert message in result["result"]
    outcome = parser.finish(meta(case)["exit_code"], None, stopped=False)
    assert outcome.status == models.RunStatus.failed
    assert outcome.error is not None and message in outcome.error
    assert "CODEX_API_KEY" in outcome.error and "{" not in outcome.error


def test_followup_by_resume_adds_turns_and_usage() -> None:
    parser = codex.CodexAdapter().new_parser()
    for case in ("write-and-commit", "followup"):
        for line in lines(case):
            parser.feed_stdout(line)
    assert parser.summary.num_turns == 2
    assert parser.summary.usage.input_tokens == 16130 + 21664
    assert parser.finish(0, None, stopped=False).status == models.RunStatus.succeeded


def test_replay_is_deterministic() -> None:
    for case in CASES:
        first = [d.model_dump(exclude={"ts"}) for d in feed(case)[1]]
        assert first == [d.model_dump(exclude={"ts"}) for d in feed(case)[1]]


# --- the parser, on synthetic lines ------------------------------------------------------


def parse(*objs: Any) -> tuple[codex_stream.CodexStreamParser, list[models.EventDraft]]:
    parser = codex_stream.CodexStreamParser()
    drafts = [d for obj in objs for d in parser.feed_stdout(json.dumps(obj).encode())]
    return parser, drafts


def test_documented_item_types_become_calls_text_and_thinking() -> None:
    items = [
        {"id": "1", "type": "reasoning", "text": "Let me look."},
        {"id": "2", "type": "file_change", "status": "completed",
         "changes": [{"path": "a.txt", "kind": "add"}, {"path": "b.py", "kind": "update"}]},
        {"id": "3", "type": "mcp_tool_call", "server": "s", "tool": "t", "arguments": {"x": 1},
         "result": {"ok": True}, "error": None, "status": "completed"},
        {"id": "4", "type": "web_search", "query": "codex"},
    ]  # fmt: skip
    _, drafts = parse(*({"type": "item.completed", "item": item} for item in items))
    assert [d.type for d in drafts] == [
        "agent.thinking", "agent.tool_call", "agent.tool_result", "agent.tool_call",
        "agent.tool_result", "agent.tool_call", "agent.tool_result",
    ]  # fmt: skip
    calls = of_type(drafts, "agent.tool_call")
    assert [c["name"] for c in calls] == ["file_change", "mcp__s__t", "web_search"]
    assert of_type(drafts, "agent.tool_result")[0]["content"] == "add a.txt\nupdate b.py"


def test_unknown_items_and_lines_are_kept() -> None:
    _, drafts = parse(
        {"type": "item.updated", "item": {"id": "5", "type": "todo_list", "items": []}},
        {"type": "item.completed", "item": {"id": "6", "type": "brand_new", "x": 1}},
        {"type": "something.else", "y": 2},
    )
    assert [d.data["subtype"] for d in drafts] == [
        "item.updated:todo_list", "item:brand_new", "something.else",
    ]  # fmt: skip
    assert drafts[1].data["x"] == 1


def test_a_process_gone_mid_turn_fails_with_its_last_error_and_stderr() -> None:
    parser, _ = parse({"type": "thread.started", "thread_id": "t"}, {"type": "turn.started"},
                      {"type": "error", "message": "Reconnecting... 1/5"})  # fmt: skip
    parser.feed_stderr(b"boom")
    outcome = parser.finish(None, signal.SIGKILL, stopped=False)
    assert outcome.status == models.RunStatus.failed and outcome.error is not None
    assert (
        "SIGKILL" in outcome.error and "Reconnecting" in outcome.error and "boom" in outcome.error
    )
    assert parser.finish(143, None, stopped=True).status == models.RunStatus.stopped
    assert parser.finish(None, None, stopped=False, lost=True).status == models.RunStatus.lost


def test_a_resume_killed_mid_turn_is_not_a_success() -> None:
    parser, _ = feed("write-and-commit")
    parser.feed_stdout(b'{"type":"turn.started"}')
    assert parser.finish(1, None, stopped=False).status == models.RunStatus.failed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_never_crashes_on_garbage(line: bytes) -> None:
    parser = codex_stream.CodexStreamParser()
    for draft in parser.feed_stdout(line):
        json.dumps(draft.data)
    parser.finish(1, None, stopped=False)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_never_crashes_on_odd_shapes(value: Any) -> None:
    for kind in ("item.completed", "item.started", "turn.completed", "turn.failed", "error"):
        parser = codex_stream.CodexStreamParser()
        obj = {"type": kind, "item": value, "usage": value, "error": value, "message": value}
        for draft in parser.feed_stdout(json.dumps(obj).encode()):
            json.dumps(draft.data)


# --- turns counted live, and the watchdog's phases ----------------------------------------


@pytest.mark.parametrize(
    ("case", "turns"),
    [("write-and-commit", 3), ("followup", 3), ("failing-command", 2), ("stream-error", 0)],
)
def test_model_turns_are_counted_live_from_the_items(case: str, turns: int) -> None:
    # A reply with a command, another, then the message: three model turns. The warning item
    # before the turn (Codex's, not the model's) counts for nothing.
    parser = codex.CodexAdapter().new_parser()
    for raw in lines(case):
        parser.feed_stdout(raw)
    assert parser.summary.live_turns == turns


def test_commands_one_reply_started_together_are_one_turn() -> None:
    def command(kind: str, item_id: str) -> dict[str, Any]:
        return {"type": kind, "item": {"id": item_id, "type": "command_execution",
                                       "command": "true", "exit_code": 0}}  # fmt: skip

    parser, _ = parse(
        {"type": "turn.started"},
        command("item.started", "a"), command("item.started", "b"),
        command("item.completed", "a"), command("item.completed", "b"),
        {"type": "item.completed", "item": {"id": "c", "type": "agent_message", "text": "ok"}},
    )  # fmt: skip
    assert parser.summary.live_turns == 2


def test_the_watchdog_s_phase_follows_codex_s_items() -> None:
    tracker = watchdog.Tracker.of(models.AgentSpec(repo="/r", agent="codex"))
    parser = codex.CodexAdapter().new_parser()
    phases = []
    for raw in lines("write-and-commit"):
        tracker.feed(parser.feed_stdout(raw))
        phases.append(tracker.phase.value)
    # thread, warning, turn.started; two commands (started: tool; completed: the model's
    # turn again); the message; the turn's end (the process should exit now).
    assert phases == [
        "model", "model", "model", "tool", "model", "tool", "model", "model", "result",
    ]  # fmt: skip
    # A follow-up's turn (the next ``codex exec resume``) is the model's again.
    tracker.feed(parser.feed_stdout(b'{"type":"turn.started"}'))
    assert tracker.phase is watchdog.Phase.model
