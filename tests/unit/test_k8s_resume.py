"""The Kubernetes handle of a pod that waits after its agent (AGENTFARM_RESUME_WAIT) at unit
level: the pod's ``agentfarm.exited`` notice ends the records, a resumed process's records
count from the line the pod named, stop ends only the agent, finalize tells the pod to finish
and reads where the branch went. The real pod is on the kubelet tier
(tests/k8s/test_parking_node.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from agentfarm.backends.base import Record
from agentfarm.backends.kubernetes import handle as k8s_handle
from tests.unit.test_k8s_cursor import line

RUNNING = {
    "metadata": {"name": "agentfarm-run-r1", "resourceVersion": "1"},
    "spec": {"nodeName": "node-1"},
    "status": {
        "phase": "Running",
        "containerStatuses": [{"name": "agent", "state": {"running": {}}}],
    },
}
DONE = {
    "metadata": {"name": "agentfarm-run-r1", "resourceVersion": "2"},
    "spec": {"nodeName": "node-1"},
    "status": {
        "phase": "Succeeded",
        "containerStatuses": [{"name": "agent", "state": {"terminated": {"exitCode": 0}}}],
    },
}


def notice(seq: int, text: str) -> bytes:
    return b"\x1eN%d %s" % (seq, text.encode())


class WaitingPod:
    """Plays the API for one pod: its log, its state (running until ``finish``), the control
    requests exec'd in it."""

    def __init__(self, log: list[bytes]) -> None:
        self.log = log
        self.pod: dict[str, Any] = RUNNING
        self.requests: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.pod

    async def pod_log(
        self, namespace: str, name: str, container: str, *, follow: bool,
        since_seconds: int | None = None,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        for item in list(self.log):
            yield item

    async def exec_pod(
        self, namespace: str, name: str, container: str, command: list[str], stdin: bytes
    ) -> tuple[bytes, str | None]:
        request = json.loads(stdin)
        self.requests.append(request)
        if request["op"] == "finish":
            branch = {"branch": "agentfarm/r1", "start": "a" * 40, "head": "b" * 40,
                      "commits": 2, "pushed": True, "error": None}  # fmt: skip
            self.log += [
                notice(len(self.log) + 1, "agentfarm.branch " + json.dumps(branch)),
                notice(len(self.log) + 2, "pushed 2 commit(s) to agentfarm/r1 (last: b x)"),
            ]
            self.pod = DONE
        return b'{"ok": true, "seq": 7}\n', None

    async def delete_secret(self, namespace: str, name: str) -> None:
        self.deleted.append("secret")

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int) -> None:
        self.deleted.append("pod")


def handle(api: WaitingPod, base: int = 0) -> k8s_handle.KubernetesHandle:
    state = k8s_handle.RunState("ns", "agentfarm-run-r1", base=base, waits=True)
    return k8s_handle.KubernetesHandle("r1", api, state)  # type: ignore[arg-type]


async def collect(h: k8s_handle.KubernetesHandle, after: int = 0) -> list[Record]:
    return [r async for r in h.records(after=after)]


FIRST = [line(1), line(2), notice(3, 'agentfarm.exited {"code": 0}')]
SECOND = [line(4), line(5, "E"), notice(6, 'agentfarm.exited {"code": 1}')]


async def test_the_exited_notice_ends_the_records_of_a_waiting_pod() -> None:
    found = await collect(handle(WaitingPod(FIRST)))
    assert [r.kind for r in found] == ["started", "stdout", "stdout", "exit"]
    exit_info = found[-1].exit
    assert exit_info is not None and exit_info.exit_code == 0 and not exit_info.stopped


async def test_a_resumed_process_counts_from_the_line_the_pod_named() -> None:
    found = await collect(handle(WaitingPod(FIRST + SECOND), base=3))
    assert [(r.cursor >> 8, r.kind) for r in found if r.kind != "started"] == [
        (1, "stdout"), (2, "stderr"), (3, "exit"),
    ]  # fmt: skip
    exit_info = found[-1].exit
    assert exit_info is not None and exit_info.exit_code == 1
    # After a restart, from a stored cursor: nothing doubled.
    again = await collect(handle(WaitingPod(FIRST + SECOND), base=3), after=1 << 8)
    assert [(r.cursor >> 8, r.kind) for r in again] == [(2, "stderr"), (3, "exit")]


async def test_stop_ends_the_agent_and_the_exit_says_stopped() -> None:
    api = WaitingPod(FIRST)
    h = handle(api)
    await h.stop(grace=3)
    assert api.requests == [{"op": "stop", "grace": 3}] and api.deleted == []
    found = await collect(h)
    assert found[-1].exit is not None and found[-1].exit.stopped


async def test_finalize_tells_the_pod_to_finish_and_reads_where_the_branch_went() -> None:
    api = WaitingPod(FIRST + SECOND)
    h = handle(api, base=3)
    notices = await h.finalize()
    assert api.requests == [{"op": "finish"}]
    assert notices == ["pushed 2 commit(s) to agentfarm/r1 (last: b x)"]
    assert h.branch_outcome is not None and h.branch_outcome.commits == 2
    assert h.branch_outcome.pushed
    assert api.deleted == ["secret"]


async def test_finalize_of_a_pod_that_ended_by_itself_sends_nothing() -> None:
    api = WaitingPod(FIRST)
    api.pod = DONE
    assert await handle(api).finalize() == []
    assert api.requests == []
