"""The entrypoint between agent processes (AGENTFARM_RESUME_WAIT): it says the agent exited,
then waits for the control plane's ``resume`` (a new agent process in the same pod, its lines
numbered on from the last) or ``finish``, or for its wait to run out, or for a signal."""

from __future__ import annotations

import base64
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_k8s_entrypoint import LINE_RE
from tests.unit.test_k8s_entrypoint_control import GUARD, Pod, message, reap

EXITED = 'agentfarm.exited {"code": 0}'


class WaitingPod(Pod):
    """A :class:`Pod` whose lines also keep their sequence numbers."""

    def __init__(self, tmp_path: Path, first: str) -> None:
        self.seqs: list[int] = []
        super().__init__(tmp_path, window=0, first=first)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            found = LINE_RE.fullmatch(raw.rstrip(b"\n"))
            assert found, raw
            self.seqs.append(int(found.group(2)))
            self.lines.put((found.group(1).decode(), found.group(3).decode()))
        self.lines.put(("EOF", ""))

    def resume(self, tmp_path: Path, text: str) -> dict[str, object]:
        argv = [sys.executable, str(tmp_path / "agent.py")]
        stdin = base64.b64encode(message(text)).decode()
        return self.control({"op": "resume", "argv": argv, "stdin": stdin})  # type: ignore[dict-item]


@pytest.fixture
def pods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Pod]]:
    monkeypatch.setenv("AGENTFARM_RESUME_WAIT", "3600")
    made: list[Pod] = []
    yield made
    reap(made)


def test_resume_runs_the_next_agent_in_the_same_pod_then_finish_ends_it(
    tmp_path: Path, pods: list[Pod]
) -> None:
    pod = WaitingPod(tmp_path, first="limit")
    pods.append(pod)
    assert pod.result() == "You've hit your limit"
    assert pod.next() == ("N", EXITED)  # the agent exited; the entrypoint waits
    exited_at = pod.seqs[-1]
    assert pod.proc.poll() is None
    assert pod.send("hello") == {
        "ok": False,
        "error": "the agent has exited: it takes no more messages",
    }
    assert pod.control({"op": "resume", "argv": "claude"}) == {  # type: ignore[dict-item]
        "ok": False, "error": "bad request: argv must be a non-empty list of strings",
    }  # fmt: skip
    assert pod.resume(tmp_path, "slow") == {"ok": True, "seq": exited_at}
    # The resumed agent runs: it is neither resumed again nor finished under its feet.
    assert pod.control({"op": "finish"}) == {
        "ok": False, "error": "cannot finish: the agent is still running",
    }  # fmt: skip
    assert pod.control({"op": "interrupt"}) == {"ok": True}  # its stdin is the control's
    assert pod.result() == "interrupted"
    assert min(pod.seqs[pod.seqs.index(exited_at) + 1 :]) == exited_at + 1  # numbered on
    assert pod.next() == ("N", EXITED)
    reply = pod.control({"op": "finish"})
    assert reply["ok"] is True, reply
    assert pod.proc.wait(timeout=GUARD) == 0
    assert pod.next() == ("EOF", "")  # no push asked for (AGENTFARM_PUSH unset)


def test_the_wait_runs_out_and_the_run_finishes(
    tmp_path: Path, pods: list[Pod], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTFARM_RESUME_WAIT", "0.3")
    pod = WaitingPod(tmp_path, first="one")
    pods.append(pod)
    assert pod.result() == "one"
    assert pod.next() == ("N", EXITED)
    assert pod.next() == ("N", "no word from the control plane within 0.3 s: finishing the run")
    assert pod.proc.wait(timeout=GUARD) == 0
    reply = pod.resume(tmp_path, "late")
    assert reply["ok"] is False and "not running or not listening" in str(reply["error"])


def test_a_signal_ends_the_wait_without_finishing(tmp_path: Path, pods: list[Pod]) -> None:
    pod = WaitingPod(tmp_path, first="one")
    pods.append(pod)
    assert pod.result() == "one"
    assert pod.next() == ("N", EXITED)
    pod.proc.send_signal(signal.SIGTERM)  # the pod is deleted: a stop
    pod.proc.wait(timeout=GUARD)
    assert pod.next() == ("EOF", "")


def test_without_a_wait_the_run_ends_with_the_agent(
    tmp_path: Path, pods: list[Pod], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTFARM_RESUME_WAIT")
    pod = WaitingPod(tmp_path, first="one")
    pods.append(pod)
    assert pod.result() == "one"
    assert pod.proc.wait(timeout=GUARD) == 0
    assert pod.next() == ("EOF", "")  # no exited notice, no wait


def test_stop_ends_the_agent_not_the_pod(tmp_path: Path, pods: list[Pod]) -> None:
    pod = WaitingPod(tmp_path, first="slow")  # the agent waits for a next line: it hangs
    pods.append(pod)
    while pod.control({"op": "ping"}) != {"ok": True}:  # until its control socket listens
        assert pod.proc.poll() is None
    assert pod.control({"op": "stop", "grace": 5}) == {"ok": True}  # type: ignore[dict-item]
    assert pod.next() == ("N", 'agentfarm.exited {"code": 143}')  # SIGTERM
    assert pod.proc.poll() is None  # the pod waits: resume (after a stall) or finish
    assert pod.control({"op": "stop"}) == {"ok": True}  # nothing runs: nothing to do
    reply = pod.control({"op": "finish"})
    assert reply["ok"] is True, reply
    assert pod.proc.wait(timeout=GUARD) == 143  # the pod ends with its last agent's code
