"""Pod states, as the kubelet reports them, mapped to notices and exits."""

from __future__ import annotations

from typing import Any

from agentfarm.backends.kubernetes import status
from agentfarm.backends.kubernetes.handle import parse_line


def pod(phase: str = "Pending", *, node: str | None = "n1", **st: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {"name": "agent", "image": "img:1", "resources": {"limits": {"memory": "2Gi"}}}
        ]
    }
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "p"}, "spec": spec, "status": {"phase": phase, **st}}


def cs(name: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "state": state, "image": "img:1"}


def test_unscheduled_pod_says_why() -> None:
    p = pod(node=None, conditions=[{"type": "PodScheduled", "status": "False",
            "message": "0/2 nodes are available: 2 Insufficient memory."}])  # fmt: skip
    view = status.describe(p)
    assert view.notice == "waiting for a node: 0/2 nodes are available: 2 Insufficient memory."
    assert view.exit is None
    assert not view.agent_started


def test_image_pull_trouble_is_a_notice_and_bad_names_fail() -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
    view = status.describe(pod(initContainerStatuses=[cs("clone", waiting)]))
    assert view.notice is not None
    assert "cannot pull image img:1" in view.notice
    bad = {"waiting": {"reason": "InvalidImageName", "message": "bad ref"}}
    view = status.describe(pod(initContainerStatuses=[cs("clone", bad)]))
    assert view.exit is not None
    assert "InvalidImageName" in (view.exit.error or "")
    assert view.pod_done is False


def test_clone_then_running_then_exit() -> None:
    cloning = pod(initContainerStatuses=[cs("clone", {"running": {}})])
    assert status.describe(cloning).notice == "cloning the repository on node n1"
    running = pod("Running", containerStatuses=[cs("agent", {"running": {}})])
    assert status.describe(running).agent_started
    done = pod("Succeeded", containerStatuses=[cs("agent", {"terminated": {"exitCode": 0}})])
    view = status.describe(done)
    assert view.exit is not None
    assert view.exit.exit_code == 0
    assert view.exit.error is None


def test_oom_killed_and_evicted() -> None:
    oom = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    view = status.describe(pod("Failed", containerStatuses=[cs("agent", oom)]))
    assert view.exit is not None
    assert view.exit.oom_killed
    assert view.exit.signal == 9
    assert "limit 2Gi" in (view.exit.error or "")
    evicted = pod("Failed", reason="Evicted", message="The node was low on resource: memory.")
    view = status.describe(evicted)
    assert view.exit is not None
    assert view.exit.error == "the pod was evicted: The node was low on resource: memory."


def test_clone_failure_carries_git_message() -> None:
    failed = {"terminated": {"exitCode": 1, "message": "git clone: fatal: repository not found"}}
    view = status.describe(pod("Failed", initContainerStatuses=[cs("clone", failed)]))
    assert view.exit is not None
    assert (
        view.exit.error == "cloning the repository failed: git clone: fatal: repository not found"
    )


def test_deleted_pods_are_lost_unless_stopped() -> None:
    assert status.gone(stopping=False).lost
    assert status.gone(stopping=True).stopped
    p = pod("Running", containerStatuses=[cs("agent", {"terminated": {"exitCode": 143}})])
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert status.describe(p).exit.lost  # type: ignore[union-attr]
    assert status.describe(p, stopping=True).exit.stopped  # type: ignore[union-attr]


def test_log_lines_carry_their_sequence_number_and_kind() -> None:
    assert parse_line(b'\x1eO1 {"type":"x"}') == (1, "stdout", b'{"type":"x"}')
    assert parse_line(b"\x1eE12 boom") == (12, "stderr", b"boom")
    assert parse_line(b"\x1eN345 pushed 1 commit") == (345, "notice", b"pushed 1 commit")
    assert parse_line(b"\x1eO7 ") == (7, "stdout", b"")
    # an image from before sequence numbers, and plain text, are read as they come
    assert parse_line(b"\x1eE boom") == (None, "stderr", b"boom")
    assert parse_line(b'{"type":"x"}') == (None, "stdout", b'{"type":"x"}')
    assert parse_line(b"\x1eX1 odd") == (None, "stdout", b"\x1eX1 odd")
