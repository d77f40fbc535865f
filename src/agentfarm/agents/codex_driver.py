"""Inside the sandbox: one Codex run, one ``codex exec`` process per turn.

``codex exec`` answers one prompt and exits; a follow-up is a new process, ``codex exec resume
<thread id>``, in the same workspace and HOME. This driver gives agentfarm the one long-lived
agent process with follow-ups on stdin it expects of every agent (as Claude Code's stream-json
input does): each stdin line is ``{"text": "..."}``; the first starts the thread, each later
one resumes it. Each turn's text reaches Codex on its stdin (the prompt argument is ``-``), so a
prompt has no command-line size limit; Codex's stdout goes through unchanged (``thread.started``
tells the driver the thread id). The driver ends
when stdin closes (the backend closes it once a turn ends and nothing else is queued) or a turn's
process fails, with that process's exit status. SIGTERM and SIGINT are passed on to the running
``codex``; the driver then ends.

Run as ``python3 -S -I -c <this source> <codex binary> <flags...>``: standard library only,
no agentfarm import (the sandbox may not see the package), and nothing printed of its own on
stdout (which carries Codex's JSON lines); its complaints go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import IO

#: The separator the thread id and prompt follow.
END_OF_OPTIONS = "--"
#: The prompt argument that makes Codex read the prompt from stdin, to its end.
FROM_STDIN = "-"


class Driver:
    def __init__(self, binary: str, flags: list[str]) -> None:
        self.binary = binary
        self.flags = flags
        self.thread: str | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signum)
            return
        # Between turns, waiting for stdin: nothing to pass it on to.
        raise SystemExit(128 + signum)

    def argv(self) -> list[str]:
        if self.thread is None:
            return [self.binary, "exec", *self.flags, END_OF_OPTIONS, FROM_STDIN]
        return [self.binary, "exec", "resume", *self.flags, END_OF_OPTIONS, self.thread, FROM_STDIN]

    def turn(self, text: str) -> int:
        out = sys.stdout.buffer
        try:
            self.child = subprocess.Popen(
                self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except OSError as exc:
            sys.stderr.write(f"agentfarm: cannot start {self.binary}: {exc}\n")
            return 127
        # On a thread: a long prompt must not block the reading of Codex's output.
        threading.Thread(target=feed, args=(self.child.stdin, text.encode()), daemon=True).start()
        stdout = self.child.stdout
        if stdout is not None:
            for line in stdout:
                out.write(line)
                out.flush()
                if self.thread is None and b'"thread.started"' in line:
                    self.thread = thread_id(line)
        code = self.child.wait()
        self.child = None
        return 128 - code if code < 0 else code

    def run(self, stdin: Iterable[bytes]) -> int:
        code = 0
        for raw in stdin:
            text = message_text(raw)
            if text is None:
                sys.stderr.write('agentfarm: ignored a stdin line that is not {"text": ...}\n')
                continue
            code = self.turn(text)
            if code != 0 or self.stopping:
                break
        return code


def feed(stdin: IO[bytes] | None, data: bytes) -> None:
    """Write the turn's text to Codex's stdin and close it (Codex reads to the end)."""
    if stdin is None:
        return
    # OSError: Codex is gone already; its exit status tells why.
    with contextlib.suppress(OSError), stdin:
        stdin.write(data)


def message_text(raw: bytes) -> str | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    text = body.get("text") if isinstance(body, dict) else None
    return text if isinstance(text, str) else None


def thread_id(line: bytes) -> str | None:
    try:
        body = json.loads(line)
    except ValueError:
        return None
    value = body.get("thread_id") if isinstance(body, dict) else None
    # It becomes an argument after `--`: a plain id, nothing else.
    if (
        isinstance(value, str)
        and value[:1].isalnum()
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    ):
        return value
    return None


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        sys.stderr.write("usage: codex_driver CODEX_BINARY [FLAGS...]\n")
        return 2
    driver = Driver(argv[0], argv[1:])
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, driver.on_signal)
    return driver.run(sys.stdin.buffer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
