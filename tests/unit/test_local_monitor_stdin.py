"""The monitor's stdin: pending turns, the follow-up window and interrupts, on a real pipe with
a clock the test moves."""

from __future__ import annotations

import os
import selectors
from collections.abc import Iterator

import pytest

from agentfarm.backends.local import monitor_stdin
from agentfarm.domain import launch

RESULT = b'{"type":"result","subtype":"success"}'
FOLLOWUP = launch.Followup(b'{"text": ', b"}\n")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Pipe:
    """The agent's side of its stdin: what was written, and whether it was closed."""

    def __init__(self) -> None:
        read, write = os.pipe()
        self.reader = read
        self.writer = os.fdopen(write, "wb")

    def drain(self, stdin: monitor_stdin.Stdin) -> bytes:
        while stdin.buffer and stdin.open:
            stdin.write()
        os.set_blocking(self.reader, False)
        try:
            return os.read(self.reader, 1 << 16)
        except BlockingIOError:
            return b""

    @property
    def closed(self) -> bool:
        return self.writer.closed

    def dispose(self) -> None:
        self.writer.close()
        os.close(self.reader)


PIPES: list[Pipe] = []


@pytest.fixture
def sel() -> Iterator[selectors.BaseSelector]:
    with selectors.DefaultSelector() as s:
        yield s
    while PIPES:
        PIPES.pop().dispose()


def make(
    sel: selectors.BaseSelector, **fields: object
) -> tuple[monitor_stdin.Stdin, Pipe, Clock, list[str]]:
    values: dict[str, object] = {
        "argv": ["agent"], "env": {}, "stdin": b"first\n", "close_stdin_after": ("result",),
        "followup": FOLLOWUP, "interrupt": b"INTERRUPT\n",
    }  # fmt: skip
    values.update(fields)
    command = launch.AgentCommand(**values)  # type: ignore[arg-type]
    notices: list[str] = []
    clock = Clock()
    stdin = monitor_stdin.Stdin(sel, command, notices.append, clock)
    pipe = Pipe()
    PIPES.append(pipe)
    stdin.attach(pipe.writer)
    return stdin, pipe, clock, notices


def test_without_a_window_stdin_closes_at_the_result(sel: selectors.BaseSelector) -> None:
    stdin, pipe, _, notices = make(sel)
    assert pipe.drain(stdin) == b"first\n"
    stdin.on_stdout(b'{"type":"assistant"}')
    assert stdin.open
    stdin.on_stdout(RESULT)
    assert pipe.closed and not stdin.open and notices == []
    assert stdin.accept(b"late\n") == "the agent's stdin is closed: it takes no more messages"


def test_a_message_queued_mid_turn_keeps_stdin_open_for_its_answer(
    sel: selectors.BaseSelector,
) -> None:
    stdin, pipe, _, _ = make(sel)
    assert stdin.accept(b"second\n") is None
    assert pipe.drain(stdin) == b"first\nsecond\n"
    stdin.on_stdout(RESULT)
    assert stdin.open  # the second message is answered next
    stdin.on_stdout(RESULT)
    assert pipe.closed


def test_the_window_waits_for_a_follow_up_then_closes(sel: selectors.BaseSelector) -> None:
    stdin, pipe, clock, notices = make(sel, followup_window=30.0)
    pipe.drain(stdin)
    stdin.on_stdout(RESULT)
    assert stdin.open and stdin.tick() == 130.0
    assert [launch.waiting_seconds(n) for n in notices] == [30.0]
    clock.now = 120.0
    assert stdin.accept(b"more\n") is None  # within the window: a new turn
    assert stdin.tick() is None and pipe.drain(stdin) == b"more\n"
    stdin.on_stdout(RESULT)
    assert stdin.tick() == 150.0 and len(notices) == 2
    clock.now = 150.0
    assert stdin.tick() is None
    assert pipe.closed
    assert notices[-1] == "no follow-up came within 30 s: the agent ends on its last answer"


def test_an_interrupted_turn_keeps_the_run_open(sel: selectors.BaseSelector) -> None:
    stdin, pipe, _, notices = make(sel)
    pipe.drain(stdin)
    assert stdin.interrupt() is None
    assert pipe.drain(stdin) == b"INTERRUPT\n"
    stdin.on_stdout(RESULT)  # the interrupted turn's result
    assert stdin.open
    assert launch.waiting_seconds(notices[0]) == launch.INTERRUPTED_WINDOW_SECONDS
    assert stdin.interrupt() == "no turn is running: the agent is waiting for a message"
    assert stdin.accept(b"do this instead\n") is None
    stdin.on_stdout(RESULT)
    assert pipe.closed  # no window of its own: the run ends on that answer


def test_an_agent_without_an_interrupt_says_so(sel: selectors.BaseSelector) -> None:
    stdin, _, _, _ = make(sel, interrupt=b"")
    assert stdin.interrupt() == "this agent cannot be interrupted: stop the run instead"


def test_a_program_that_reads_to_the_end_gets_stdin_closed_once_written(
    sel: selectors.BaseSelector,
) -> None:
    stdin, pipe, _, _ = make(
        sel, close_stdin_after=(), close_stdin_when_written=True, followup=None
    )
    assert pipe.drain(stdin) == b"first\n"
    assert pipe.closed


REPLAY = b'{"type":"user","message":{"role":"user","content":"x"},"isReplay":true}'


def test_with_replays_a_message_taken_mid_turn_is_answered_in_that_turn(
    sel: selectors.BaseSelector,
) -> None:
    # Claude Code answers a message sent while a tool runs within the running turn: one
    # result for two messages, each echoed as it is taken.
    stdin, pipe, _, _ = make(sel, replays=True)
    stdin.on_stdout(REPLAY)  # the prompt, taken
    assert stdin.accept(b"second\n") is None
    pipe.drain(stdin)
    stdin.on_stdout(b'{"type":"user","message":{"content":[{"type":"tool_result"}]}}')
    assert stdin.pending == 1  # a tool's result is no echo
    stdin.on_stdout(REPLAY)  # the second, taken within the turn
    stdin.on_stdout(RESULT)
    assert pipe.closed


def test_with_replays_a_message_not_yet_taken_keeps_stdin_open(
    sel: selectors.BaseSelector,
) -> None:
    stdin, pipe, _, _ = make(sel, replays=True)
    stdin.on_stdout(REPLAY)
    assert stdin.accept(b"second\n") is None
    stdin.on_stdout(RESULT)  # the first turn ends before the CLI took the second message
    assert stdin.open
    stdin.on_stdout(REPLAY)
    stdin.on_stdout(RESULT)
    assert pipe.closed


def test_a_replay_is_told_by_its_top_level_field() -> None:
    assert launch.is_replay(REPLAY)
    assert not launch.is_replay(b'{"type":"user","tool_use_result":"\\"isReplay\\":true"}')
    assert not launch.is_replay(b'{"type":"assistant","isReplay":true}')
    assert not launch.is_replay(b'"isReplay" not json')


def test_a_turn_the_api_failed_opens_no_window(sel: selectors.BaseSelector) -> None:
    # A usage limit: the run ends (or is parked) now, not after the window.
    stdin, pipe, _, notices = make(sel, followup_window=600.0)
    pipe.drain(stdin)
    stdin.on_stdout(b'{"type":"result","is_error":true,"terminal_reason":"api_error"}')
    assert pipe.closed and notices == []
