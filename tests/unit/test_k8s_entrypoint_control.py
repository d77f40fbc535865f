"""The agent image's entrypoint talking to a running agent: follow-ups and interrupts through
``entrypoint.py control`` (what the control plane execs in the pod), the follow-up window, and
the 409-worthy refusals, with a small stand-in agent that speaks one JSON line per turn."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_k8s_entrypoint import ENTRYPOINT, LINE_RE

#: Hang guard only: every wait ends on a line long before this.
GUARD = 60

#: Answers each stdin line with a ``result``; ``slow`` waits for the next line, and answers
#: an interrupt there with an interrupted ``result`` (as Claude Code does).
AGENT = r"""
import json, os, sys
def say(**kw):
    print(json.dumps(kw), flush=True)
def took():
    if os.environ.get("AGENTFARM_REPLAYS") == "1":
        say(type="user", isReplay=True)
for line in sys.stdin:
    body = json.loads(line)
    if body.get("type") == "control_request":
        say(type="control_response")
        continue
    took()
    text = body["text"]
    if text == "slow":
        nxt = json.loads(sys.stdin.readline())
        if nxt.get("type") == "control_request":
            say(type="control_response")
            say(type="result", text="interrupted")
            continue
        took()
        text = "slow+" + nxt["text"]  # taken within the running turn, as Claude does
    if text == "limit":
        say(type="result", text="You've hit your limit", terminal_reason="api_error")
        continue
    say(type="result", text=text)
"""
INTERRUPT = b'{"type": "control_request", "request": {"subtype": "interrupt"}}\n'


def message(text: str) -> bytes:
    return json.dumps({"text": text}).encode() + b"\n"


class Pod:
    """The entrypoint's ``run`` as a process; its output lines (kind, text) on a queue."""

    def __init__(
        self, tmp_path: Path, window: float, first: str = "one", replays: bool = False
    ) -> None:
        (tmp_path / "agent.py").write_text(AGENT)
        (tmp_path / "stdin").write_bytes(message(first))
        (tmp_path / "ws").mkdir()
        self.env = dict(
            os.environ,
            HOME=str(tmp_path),
            AGENTFARM_WORKSPACE=str(tmp_path / "ws"),
            AGENTFARM_STDIN=str(tmp_path / "stdin"),
            AGENTFARM_CLOSE_STDIN_AFTER='["result"]',
            AGENTFARM_FOLLOWUP_WINDOW=str(window),
            AGENTFARM_INTERRUPT=base64.b64encode(INTERRUPT).decode(),
            AGENTFARM_INTERRUPTED_WINDOW=str(window),
            AGENTFARM_CONTROL=str(tmp_path / "control.sock"),
            AGENTFARM_GIT_CREDENTIALS="[]",
            AGENTFARM_REPLAYS="1" if replays else "",
        )
        agent = [sys.executable, str(tmp_path / "agent.py")]
        self.proc = subprocess.Popen(
            [sys.executable, str(ENTRYPOINT), "run", "--", *agent],
            env=self.env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            found = LINE_RE.fullmatch(raw.rstrip(b"\n"))
            assert found, raw
            self.lines.put((found.group(1).decode(), found.group(3).decode()))
        self.lines.put(("EOF", ""))

    def next(self) -> tuple[str, str]:
        return self.lines.get(timeout=GUARD)

    def result(self) -> str:
        while True:
            kind, text = self.next()
            assert kind != "EOF"
            if kind == "O" and json.loads(text)["type"] == "result":
                return str(json.loads(text)["text"])

    def control(self, request: dict[str, str]) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, str(ENTRYPOINT), "control"], env=self.env, capture_output=True,
            input=json.dumps(request).encode() + b"\n", timeout=GUARD, check=True,
        )  # fmt: skip
        reply: dict[str, object] = json.loads(done.stdout)
        return reply

    def send(self, text: str) -> dict[str, object]:
        return self.control({"op": "send", "data": base64.b64encode(message(text)).decode()})


def reap(made: list[Pod]) -> None:
    """End the entrypoints a test started (the ones still running, killed)."""
    for pod in made:
        if pod.proc.poll() is None:
            pod.proc.kill()
        pod.proc.wait(timeout=GUARD)
        if pod.proc.stdout is not None:
            pod.proc.stdout.close()


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[list[Pod]]:
    made: list[Pod] = []
    yield made
    reap(made)


def test_follow_ups_and_an_interrupt_through_the_control_socket(
    tmp_path: Path, pods: list[Pod]
) -> None:
    pod = Pod(tmp_path, window=3600)
    pods.append(pod)
    assert pod.result() == "one"
    assert pod.next() == ("N", 'agentfarm.waiting {"seconds": 3600.0}')
    assert pod.control({"op": "interrupt"}) == {
        "ok": False, "error": "no turn is running: the agent is waiting for a message",
    }  # fmt: skip
    assert pod.send("two") == {"ok": True}  # within the window: a new turn
    assert pod.result() == "two"
    assert pod.send("slow") == {"ok": True}
    assert pod.control({"op": "interrupt"}) == {"ok": True}
    assert pod.result() == "interrupted"
    assert pod.next()[1].startswith("agentfarm.waiting ")  # the run goes on
    assert pod.send("three") == {"ok": True}
    assert pod.result() == "three"
    assert pod.control({"op": "nonsense"}) == {"ok": False, "error": "unknown request 'nonsense'"}
    pod.proc.send_signal(signal.SIGTERM)
    pod.proc.wait(timeout=GUARD)


def test_the_window_ends_and_the_run_with_it(tmp_path: Path, pods: list[Pod]) -> None:
    pod = Pod(tmp_path, window=0.2)
    pods.append(pod)
    assert pod.result() == "one"
    assert pod.next() == ("N", 'agentfarm.waiting {"seconds": 0.2}')
    expected = "no follow-up came within 0.2 s: the agent ends on its last answer"
    assert pod.next() == ("N", expected)
    assert pod.proc.wait(timeout=GUARD) == 0
    reply = pod.send("late")
    assert reply["ok"] is False and "not running or not listening" in str(reply["error"])


def test_without_a_window_stdin_closes_at_the_result(tmp_path: Path, pods: list[Pod]) -> None:
    pod = Pod(tmp_path, window=0)
    pods.append(pod)
    assert pod.result() == "one"
    assert pod.proc.wait(timeout=GUARD) == 0
    kinds = []
    while (line := pod.next())[0] != "EOF":
        kinds.append(line)
    assert not [text for kind, text in kinds if text.startswith("agentfarm.waiting")]


def test_with_replays_a_message_taken_mid_turn_ends_with_that_turn(
    tmp_path: Path, pods: list[Pod]
) -> None:
    pod = Pod(tmp_path, window=0, first="slow", replays=True)
    pods.append(pod)
    assert pod.next() == ("O", '{"type": "user", "isReplay": true}')  # it took "slow"
    assert pod.send("two") == {"ok": True}
    assert pod.result() == "slow+two"  # one turn answered both
    assert pod.proc.wait(timeout=GUARD) == 0  # nothing left unread: stdin closed


def test_a_turn_the_api_failed_opens_no_window(tmp_path: Path, pods: list[Pod]) -> None:
    pod = Pod(tmp_path, window=3600, first="limit")
    pods.append(pod)
    assert pod.result() == "You've hit your limit"
    assert pod.proc.wait(timeout=GUARD) == 0  # stdin closed at once: no window
