"""The generic command agent: its config section, command builder and line parser."""

from __future__ import annotations

import pydantic
import pytest

from agentfarm.agents import capping, command
from agentfarm.agents.base import AgentAdapter, StreamParser
from agentfarm.domain import errors, launch, models
from agentfarm.supervisor import budgets, watchdog


def spec(**command_section: object) -> models.AgentSpec:
    section = {"argv": ["sh", "-c", "cat"], **command_section}
    return models.AgentSpec(repo="/r", prompt="fix it", agent="command", command=section)


def test_it_implements_the_adapter_protocols() -> None:
    adapter: AgentAdapter = command.CommandAdapter()
    parser: StreamParser = adapter.new_parser()
    assert adapter.name == "command" and adapter.credential_names() == ()
    assert parser.summary.session_id is None


def test_the_prompt_goes_on_stdin_which_then_closes() -> None:
    built = command.CommandAdapter().build_command(spec(prompt="stdin"))
    assert list(built.argv) == ["sh", "-c", "cat"]
    assert built.stdin == b"fix it\n" and built.close_stdin_when_written
    assert built.followup is None and built.interrupt == b""


def test_the_prompt_as_the_last_argument_or_not_at_all() -> None:
    as_arg = command.CommandAdapter().build_command(spec(prompt="argument"))
    assert list(as_arg.argv) == ["sh", "-c", "cat", "fix it"] and as_arg.stdin == b""
    none = command.CommandAdapter().build_command(spec(prompt="none"))
    assert list(none.argv) == ["sh", "-c", "cat"] and none.stdin == b""
    assert none.close_stdin_when_written


def test_the_config_env_reaches_the_program() -> None:
    built = command.CommandAdapter().build_command(
        models.AgentSpec(
            repo="/r", prompt="p", agent="command", command={"argv": ["x"]}, env={"A": "1"}
        )
    )
    assert dict(built.env) == {"A": "1"}


def test_the_command_round_trips_through_the_launch_json() -> None:
    built = command.CommandAdapter().build_command(spec())
    assert launch.AgentCommand.from_json(built.to_json()) == built


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"agent": "command"}, "needs a command"),
        ({"agent": "command", "command": {"argv": []}}, "argv"),
        ({"agent": "command", "command": {"argv": [""]}}, "argv"),
        ({"agent": "command", "command": {"argv": ["a\x00b"]}}, "NUL"),
        ({"agent": "command", "command": {"argv": ["-rf"]}}, "program"),
        ({"agent": "command", "command": {"argv": ["x"] * 201}}, "argv"),
        ({"agent": "command", "command": {"argv": ["x" * 4097]}}, "argv"),
        ({"agent": "command", "command": {"argv": ["x"], "prompt": "file"}}, "prompt"),
        ({"agent": "command", "command": {"argv": ["x"], "shell": True}}, "shell"),
        ({"command": {"argv": ["x"]}}, "only for `agent: command`"),
    ],
)
def test_invalid_command_sections_are_refused_naming_the_field(
    fields: dict[str, object], needle: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        models.AgentSpec.model_validate({"repo": "/r", **fields})
    errors = info.value.errors()
    assert errors[0]["loc"][0] == "command"
    assert needle in str(info.value)


def test_each_line_is_a_text_or_stderr_event() -> None:
    parser = command.CommandParser()
    (out,) = parser.feed_stdout(b"hello \xff\r")
    (err,) = parser.feed_stderr(b"warning")
    assert out.type == models.EventType.agent_text and out.data == {"text": "hello \ufffd"}
    assert err.type == models.EventType.agent_stderr and err.data == {"line": "warning"}


def test_a_huge_line_is_capped() -> None:
    (event,) = command.CommandParser().feed_stdout(b"x" * (capping.MAX_STRING * 2))
    assert len(event.data["text"].encode()) <= capping.MAX_STRING
    assert "truncated" in event.data["text"]


@pytest.mark.parametrize(
    ("exit_code", "signal", "stopped", "lost", "status", "needle"),
    [
        (0, None, False, False, models.RunStatus.succeeded, None),
        (3, None, False, False, models.RunStatus.failed, "code 3"),
        (None, 9, False, False, models.RunStatus.failed, "killed by SIGKILL"),
        (139, None, False, False, models.RunStatus.failed, "killed by SIGSEGV"),
        (None, 15, True, False, models.RunStatus.stopped, None),
        (None, None, False, True, models.RunStatus.lost, "went away"),
    ],
)
def test_the_exit_code_decides_the_status(
    exit_code: int | None,
    signal: int | None,
    stopped: bool,
    lost: bool,
    status: models.RunStatus,
    needle: str | None,
) -> None:
    outcome = command.CommandParser().finish(exit_code, signal, stopped=stopped, lost=lost)
    assert outcome.status == status
    if needle is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None and needle in outcome.error


def test_only_the_time_budget_holds_and_quiet_output_is_a_tool_s() -> None:
    for field, value in (("max_budget_usd", 1.0), ("max_turns", 3)):
        with pytest.raises(errors.InvalidInputError, match=f"{field} cannot hold"):
            budgets.check_supported(spec().model_copy(update={field: value}))
    budgets.check_supported(spec().model_copy(update={"max_minutes": 5.0}))
    tracker = watchdog.Tracker.of(spec())
    assert tracker.phase is watchdog.Phase.starting  # nothing printed yet
    parser = command.CommandAdapter().new_parser()
    tracker.feed(parser.feed_stdout(b"working"))
    assert tracker.phase is watchdog.Phase.tool
