"""The agent's stdin, as the monitor feeds it: the first bytes, follow-ups, interrupts, and
when to close it.

An agent whose stdout says when a turn ends (``close_stdin_after``: Claude's ``result``,
Codex's ``turn.completed``) keeps its stdin while messages wait: the first message counts one,
each follow-up one more, and one less when the agent takes it (its echo, for an agent that
``replays``: Claude answers a message sent while a tool runs within the running turn) or else
at each turn's end (Codex's driver answers each message with one turn). At a turn's end with
none waiting the agent has answered everything: stdin closes (the agent then exits), or with a
follow-up window it stays open that long for a message (``waiting``), and closes at its end.

An interrupt (the command's ``interrupt`` bytes) ends the running turn, not the run: after an
interrupted turn the window is at least :data:`~agentfarm.domain.launch.INTERRUPTED_WINDOW_SECONDS`,
for the person who interrupted to say what to do instead. A turn that ended because the model's
API failed (a usage limit) opens no window: the run ends, or is parked, at once.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from collections.abc import Callable
from typing import IO

from agentfarm.backends.local import lines
from agentfarm.domain import launch

READ_SIZE = 1 << 16


class Stdin:
    def __init__(
        self,
        sel: selectors.BaseSelector,
        command: launch.AgentCommand,
        notice: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sel = sel
        self.command = command
        self.notice = notice
        self.clock = clock
        self.pipe: IO[bytes] | None = None
        self.buffer = bytearray(command.stdin)
        self.open = True
        #: Turns the agent still owes an answer to.
        self.pending = 1 if command.stdin and command.close_stdin_after else 0
        self.interrupted = False
        #: When an open window for follow-ups ends (monotonic), else None, and its length.
        self.close_at: float | None = None
        self.window = 0.0

    def attach(self, pipe: IO[bytes] | None) -> None:
        """The agent has started: its stdin pipe (None: it has none)."""
        self.pipe = pipe
        if pipe is None:
            self.open = False
            return
        os.set_blocking(pipe.fileno(), False)
        self.update()

    # --- what the agent printed --------------------------------------------------------------
    def on_stdout(self, line: bytes) -> None:
        command = self.command
        if not command.close_stdin_after or not self.open:
            return
        if command.replays and launch.is_replay(line):
            self.pending = max(0, self.pending - 1)  # taken: answered in the running turn
            return
        if lines.line_type(line) not in command.close_stdin_after:
            return
        if not command.replays:
            self.pending = max(0, self.pending - 1)
        interrupted, self.interrupted = self.interrupted, False
        if self.pending:
            return  # a message still unread starts the next turn
        window = self.command.followup_window
        if interrupted:
            window = max(window, launch.INTERRUPTED_WINDOW_SECONDS)
        if window <= 0 or self.command.followup is None or launch.failed_on_api(line):
            self.close()
            return
        self.close_at = self.clock() + window
        self.window = window
        self.notice(launch.waiting_notice(window))

    def tick(self) -> float | None:
        """Close stdin if the window has ended; the next deadline (monotonic) otherwise."""
        if self.close_at is None:
            return None
        if self.clock() < self.close_at:
            return self.close_at
        self.close_at = None
        self.notice(
            f"no follow-up came within {self.window:g} s: the agent ends on its last answer"
        )
        self.close()
        return None

    # --- what the control socket asks ----------------------------------------------------------
    def accept(self, data: bytes) -> str | None:
        """A follow-up message (one more turn); an error sentence if stdin is closed."""
        if not self.open:
            return "the agent's stdin is closed: it takes no more messages"
        self.buffer += data
        if self.command.close_stdin_after:
            self.pending += 1
        self.close_at = None
        self.update()
        return None

    def interrupt(self) -> str | None:
        """End the running turn (not the run); an error sentence if there is none."""
        if not self.command.interrupt:
            return "this agent cannot be interrupted: stop the run instead"
        if not self.open:
            return "the agent's stdin is closed: it is finishing"
        if self.close_at is not None:
            return "no turn is running: the agent is waiting for a message"
        self.buffer += self.command.interrupt
        self.interrupted = True
        self.update()
        return None

    def write_on_stop(self, interrupt: bytes | None) -> None:
        if interrupt is None:
            interrupt = self.command.interrupt
        if interrupt and self.open:
            self.buffer += interrupt
            self.update()

    # --- the pipe --------------------------------------------------------------------------------
    def update(self) -> None:
        pipe = self.pipe
        if pipe is None or not self.open:
            return
        if not self.buffer and self.command.close_stdin_when_written:
            self.close()
            return
        registered = self._registered()
        if self.buffer and not registered:
            self.sel.register(pipe, selectors.EVENT_WRITE, ("stdin", None))
        elif not self.buffer and registered:
            self.sel.unregister(pipe)

    def _registered(self) -> bool:
        try:
            self.sel.get_key(self.pipe)  # type: ignore[arg-type]
        except KeyError:
            return False
        return True

    def write(self) -> None:
        pipe = self.pipe
        if pipe is None:
            return
        try:
            written = os.write(pipe.fileno(), self.buffer[:READ_SIZE])
        except BlockingIOError:
            return
        except OSError:  # BrokenPipeError included: the agent closed it or is gone
            self.close()
            return
        del self.buffer[:written]
        self.update()

    def close(self) -> None:
        pipe = self.pipe
        self.close_at = None
        if pipe is None or not self.open:
            self.open = False
            return
        if self._registered():
            self.sel.unregister(pipe)
        with contextlib.suppress(OSError):
            pipe.close()
        self.open = False
