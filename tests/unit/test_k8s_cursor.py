"""The kubernetes backend's log cursor against a log the kubelet rotates (item 7a).

The log API serves only the newest file after a rotation, so a line's position in what it
returns says nothing; the entrypoint's sequence numbers do. A fake API (the few calls the
handle makes) serves the log as the kubelet would before and after rotating it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import pytest

from agentfarm.backends.base import Record
from agentfarm.backends.kubernetes import follow as k8s_follow
from agentfarm.backends.kubernetes import handle as k8s_handle

POD = {
    "metadata": {"name": "agentfarm-run-r1", "resourceVersion": "1"},
    "spec": {"nodeName": "node-1"},
    "status": {
        "phase": "Succeeded",
        "containerStatuses": [
            {"name": "agent", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
        ],
    },
}


def line(seq: int, kind: str = "O") -> bytes:
    payload = f'{{"n":{seq}}}' if kind == "O" else f"text {seq}"
    return b"\x1e%s%d %s" % (kind.encode(), seq, payload.encode())


class RotatingLog:
    """Plays the API: each pod_log call serves the next of ``reads``, a stream that after its
    lines ends, breaks (``"broken"``) or hangs (``"stalled"``, as a kubelet 1.20 follow of a
    file it has rotated away does); the last read repeats."""

    def __init__(self, reads: list[tuple[list[bytes], str]]) -> None:
        self.reads = reads
        self.calls: list[tuple[bool, int | None]] = []

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return POD

    async def pod_log(
        self, namespace: str, name: str, container: str, *, follow: bool,
        since_seconds: int | None = None,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        lines, end = self.reads[min(len(self.calls), len(self.reads) - 1)]
        self.calls.append((follow, since_seconds))
        for item in lines:
            yield item
        if end == "broken":
            raise aiohttp.ClientPayloadError("the stream broke")
        if end == "stalled" and follow:  # a read without follow always ends
            await asyncio.Event().wait()


async def records(api: RotatingLog, after: int = 0) -> list[Record]:
    state = k8s_handle.RunState("ns", "agentfarm-run-r1")
    handle = k8s_handle.KubernetesHandle("r1", api, state)  # type: ignore[arg-type]
    return [r async for r in handle.records(after=after)]


def body(found: Iterable[Record]) -> list[tuple[int, str, bytes]]:
    return [(r.cursor >> 8, r.kind, r.data) for r in found if r.kind in ("stdout", "stderr")]


async def test_a_stream_reopened_after_rotation_loses_and_doubles_nothing() -> None:
    # lines 1-4 arrive, the stream breaks, the kubelet rotates: the newest file starts at 3
    first = [line(n) for n in range(1, 5)]
    after_rotation = [line(3), line(4), line(5, "E"), *(line(n) for n in range(6, 9))]
    found = await records(RotatingLog([(first, "broken"), (after_rotation, "end")]))
    assert [seq for seq, _, _ in body(found)] == list(range(1, 9))
    assert body(found)[4] == (5, "stderr", b"text 5")
    assert found[-1].kind == "exit"
    cursors = [r.cursor for r in found]
    assert cursors == sorted(set(cursors))


async def test_reattaching_after_rotation_resumes_at_the_stored_cursor() -> None:
    # The control plane stored line 3, was down while the agent wrote 4-10; the kubelet has
    # rotated lines 1-5 away. 6-10 come once, with the cursors they always had, and one notice
    # says what is gone.
    newest = [line(n) for n in range(6, 11)]
    found = await records(RotatingLog([(newest, "end")]), after=3 << 8)
    assert [seq for seq, _, _ in body(found)] == [6, 7, 8, 9, 10]
    notices = [r for r in found if r.kind == "notice"]
    assert len(notices) == 1 and b"lines 4-5" in notices[0].data
    assert 3 << 8 < notices[0].cursor < 6 << 8
    again = await records(RotatingLog([(newest, "end")]), after=found[-2].cursor)
    assert [r.kind for r in again] == ["exit"]


async def test_the_rest_of_an_overlong_line_keeps_its_kind() -> None:
    lines = [line(1), line(2, "E"), b"...the rest of line 2", line(3)]
    found = await records(RotatingLog([(lines, "end")]))
    assert [(r.kind, r.data) for r in found if r.kind in ("stdout", "stderr")] == [
        ("stdout", b'{"n":1}'),
        ("stderr", b"text 2"),
        ("stderr", b"...the rest of line 2"),
        ("stdout", b'{"n":3}'),
    ]


async def test_a_follow_that_goes_quiet_is_reopened_from_shortly_before_the_last_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The kubelet rotated the file under a running follow, which then brings nothing more.
    monkeypatch.setattr(k8s_follow, "QUIET_REOPEN_SECONDS", 0.05)
    old = [line(n) for n in range(1, 4)]
    new = [line(n) for n in range(4, 7)]
    api = RunningUntilRead(2, [(old, "stalled"), (new, "end")])
    found = await records(api)
    assert [seq for seq, _, _ in body(found)] == [1, 2, 3, 4, 5, 6]
    assert not [r for r in found if r.kind == "notice"]
    follow, since = api.calls[1]
    assert follow and since is not None and since >= k8s_handle.SINCE_MARGIN_SECONDS


class RunningUntilRead(RotatingLog):
    """The agent runs until its log has been read ``reads`` times, then has exited."""

    def __init__(self, reads: int, script: list[tuple[list[bytes], str]]) -> None:
        super().__init__(script)
        self.reads_before_exit = reads

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        if len(self.calls) >= self.reads_before_exit:
            return POD
        running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        agent = {"name": "agent", "state": running}
        return POD | {"status": {"phase": "Running", "containerStatuses": [agent]}}


async def test_a_quiet_follow_of_an_ended_container_is_read_once_more_not_reopened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The follow should have ended with the container; one that hangs is not waited on.
    monkeypatch.setattr(k8s_follow, "QUIET_REOPEN_SECONDS", 0.05)
    api = RotatingLog([([line(n) for n in range(1, 4)], "stalled")])
    async with asyncio.timeout(10):
        found = await records(api)
    assert [seq for seq, _, _ in body(found)] == [1, 2, 3]
    assert found[-1].kind == "exit"
    assert [follow for follow, _ in api.calls] == [True, False]


BRANCH = (
    b'agentfarm.branch {"branch": "agentfarm/issue-3-x", "start": "' + b"a" * 40 + b'", '
    b'"head": "' + b"b" * 40 + b'", "commits": 2, "pushed": true, "error": null}'
)


async def test_the_entrypoints_branch_notice_becomes_the_outcome_even_before_the_cursor() -> None:
    lines = [line(1), b"\x1eN2 " + BRANCH, line(3, "N")]
    for after in (0, 3 << 8):  # a first read, and a reattach past it
        state = k8s_handle.RunState("ns", "agentfarm-run-r1")
        api = RotatingLog([(lines, "end")])
        handle = k8s_handle.KubernetesHandle("r1", api, state)  # type: ignore[arg-type]
        found = [r async for r in handle.records(after=after)]
        assert not any(r.data.startswith(b"agentfarm.branch") for r in found)
        assert handle.branch_outcome is not None
        assert handle.branch_outcome.to_data() == {
            "branch": "agentfarm/issue-3-x",
            "start": "a" * 40,
            "head": "b" * 40,
            "commits": 2,
            "pushed": True,
            "error": None,
        }
        assert found[-1].kind == "exit"


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", b'{"branch": "b", "start": "s", "commits": -1, "pushed": true}',
     b'{"branch": "b", "start": "s", "commits": 1, "pushed": "yes"}'],
)  # fmt: skip
def test_a_malformed_branch_notice_is_no_outcome(payload: bytes) -> None:
    assert k8s_handle.parse_branch(k8s_handle.BRANCH_NOTICE + payload) is None
