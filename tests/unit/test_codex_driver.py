"""The Codex driver as the sandbox runs it (``python3 -S -I -c <source>``), with a shell script
standing in for ``codex``: one process per turn, resume by thread id, stop by signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from agentfarm.agents import codex

FAKE = """#!/bin/sh
# Prints its arguments and its stdin as JSON lines, like codex exec --json would print events.
echo "{\\"type\\":\\"thread.started\\",\\"thread_id\\":\\"th-0001\\"}"
for arg in "$@"; do printf '{"type":"arg","value":"%s"}\\n' "$arg"; done
text=$(cat)
printf '{"type":"arg","value":"stdin:%s"}\\n' "$text"
case "$text" in
  *fail*) echo '{"type":"turn.failed"}'; exit 3 ;;
  *sleep*) trap 'kill $!; echo "{\\"type\\":\\"got-term\\"}"; exit 143' TERM
           echo '{"type":"sleeping"}'; sleep 30 & wait; exit 0 ;;
esac
echo '{"type":"turn.completed"}'
"""


def fake_codex(tmp_path: Path) -> str:
    path = tmp_path / "codex"
    path.write_text(FAKE)
    path.chmod(0o755)
    return str(path)


def start(tmp_path: Path) -> subprocess.Popen[bytes]:
    command = codex.CodexAdapter().build_command(
        codex_spec(), binary=fake_codex(tmp_path), base_url=None
    )
    return subprocess.Popen(
        command.with_program(command.binary, sys.executable),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def codex_spec() -> codex.models.AgentSpec:
    return codex.models.AgentSpec(repo="/r", prompt="first")


def args_per_turn(stdout: bytes) -> list[list[str]]:
    turns: list[list[str]] = []
    for line in stdout.splitlines():
        body = json.loads(line)
        if body["type"] == "thread.started":
            turns.append([])
        elif body["type"] == "arg":
            turns[-1].append(body["value"])
    return turns


def test_the_first_line_starts_the_thread_and_later_ones_resume_it(tmp_path: Path) -> None:
    proc = start(tmp_path)
    line = codex.FOLLOWUP.encode
    out, err = proc.communicate(line("first") + line("second -x") + b"not json\n", timeout=30)
    assert proc.returncode == 0, err
    first, second = args_per_turn(out)
    # The text comes on stdin (the prompt argument is `-`), each turn's own.
    assert first[0] == "exec" and first[-3:] == ["--", "-", "stdin:first"]
    assert second[:2] == ["exec", "resume"]
    assert second[-4:] == ["--", "th-0001", "-", "stdin:second -x"]
    assert first[1:-3] == second[2:-4]  # the same flags every turn
    assert b"ignored a stdin line" in err


def test_a_failed_turn_ends_the_driver_with_its_status(tmp_path: Path) -> None:
    proc = start(tmp_path)
    line = codex.FOLLOWUP.encode
    out, _err = proc.communicate(line("please fail") + line("never run"), timeout=30)
    assert proc.returncode == 3
    assert len(args_per_turn(out)) == 1


def test_sigterm_reaches_the_running_codex(tmp_path: Path) -> None:
    proc = start(tmp_path)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(codex.FOLLOWUP.encode("sleep now"))
    proc.stdin.flush()
    for raw in proc.stdout:
        if json.loads(raw)["type"] == "sleeping":
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 143
    assert b"got-term" in rest
    proc.stdin.close()
    proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()


def test_thread_ids_that_are_not_plain_are_not_used() -> None:
    from agentfarm.agents import codex_driver

    assert codex_driver.thread_id(b'{"type":"thread.started","thread_id":"ab-12_x"}') == "ab-12_x"
    assert codex_driver.thread_id(b'{"type":"thread.started","thread_id":"--last"}') is None
    assert codex_driver.thread_id(b'{"type":"thread.started","thread_id":"a b"}') is None
    assert codex_driver.thread_id(b"garbage") is None
