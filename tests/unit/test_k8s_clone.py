"""The clone in the agent container (no init container): a failed clone ends the run failed
with git's reason, read from the entrypoint's ``agentfarm.clone-failed`` notice in the log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agentfarm.backends.base import ExitInfo, Record
from agentfarm.backends.kubernetes import handle as k8s_handle
from agentfarm.backends.kubernetes import lines
from tests.unit.test_k8s_entrypoint import entrypoint, parse

WHY = "git clone: fatal: repository 'https://forge.example/o/r.git/' not found"


def pod(exit_code: int) -> dict[str, Any]:
    terminated = {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}
    return {
        "metadata": {"name": "agentfarm-run-r1", "resourceVersion": "1"},
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": "Failed" if exit_code else "Succeeded",
            "containerStatuses": [{"name": "agent", "state": {"terminated": terminated}}],
        },
    }


class EndedPod:
    """The few API calls the handle makes, for a pod whose agent container has ended."""

    def __init__(self, log: list[bytes], exit_code: int) -> None:
        self.log = log
        self.pod = pod(exit_code)

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.pod

    async def pod_log(
        self, namespace: str, name: str, container: str, *, follow: bool,
        since_seconds: int | None = None,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        for line in self.log:
            yield line


async def records(api: EndedPod, after: int = 0) -> list[Record]:
    state = k8s_handle.RunState("ns", "agentfarm-run-r1")
    handle = k8s_handle.KubernetesHandle("r1", api, state)  # type: ignore[arg-type]
    return [r async for r in handle.records(after=after)]


def failed_log() -> list[bytes]:
    said = json.dumps({"error": WHY}).encode()
    return [
        b"\x1eN1 cloning https://forge.example/o/r.git",
        b"\x1eN2 agentfarm.clone-failed " + said,
    ]


async def test_a_failed_clone_is_the_runs_error_and_a_notice() -> None:
    found = await records(EndedPod(failed_log(), exit_code=1))
    notices = [r.data.decode() for r in found if r.kind == "notice"]
    assert notices == [
        "cloning https://forge.example/o/r.git",
        f"cloning the repository failed: {WHY}",
    ]
    exit_info = found[-1].exit
    assert found[-1].kind == "exit" and exit_info is not None
    assert exit_info.exit_code == 1
    assert exit_info.error == f"cloning the repository failed: {WHY}"


async def test_a_reattach_after_the_notice_was_stored_still_has_the_error() -> None:
    """After a control plane restart the log is read again from the start: the stored notice
    is not doubled, and the exit still carries the clone's reason."""
    found = await records(EndedPod(failed_log(), exit_code=1), after=2 << 8)
    assert [r.kind for r in found] == ["exit"]
    assert found[0].exit is not None
    assert found[0].exit.error == f"cloning the repository failed: {WHY}"


async def test_an_agents_line_saying_the_same_is_not_the_runs_error() -> None:
    """Only the entrypoint's notice counts: the agent's own output (kind O) that looks like
    it is just output."""
    said = json.dumps({"error": "forged"}).encode()
    log = [b"\x1eO1 agentfarm.clone-failed " + said]
    found = await records(EndedPod(log, exit_code=1))
    exit_info = found[-1].exit
    assert exit_info is not None and exit_info.error is None


def test_the_notice_is_read_defensively() -> None:
    assert lines.clone_failed(b"agentfarm.branch {}") is None
    assert lines.clone_failed(b"agentfarm.clone-failed not json") == (
        "cloning the repository failed: git gave no reason"
    )
    assert lines.clone_failed(b'agentfarm.clone-failed {"error": 3}') == (
        "cloning the repository failed: git gave no reason"
    )
    long = json.dumps({"error": "x" * 10_000}).encode()
    text = lines.clone_failed(b"agentfarm.clone-failed " + long)
    assert text is not None and len(text) < 2100
    stopped = ExitInfo(exit_code=143, signal=15, stopped=True)
    assert lines.with_error(stopped, "cloning the repository failed: x") is stopped


def test_a_missing_repository_ends_the_run_before_the_agent(tmp_path: Path) -> None:
    """The entrypoint's side, with no token at all: git's words in the notice, exit code 1,
    the agent never started and nothing pushed."""
    (tmp_path / "ws").mkdir()
    marker = tmp_path / "agent-ran"
    agent = tmp_path / "agent.sh"
    agent.write_text(f"#!/bin/sh\ntouch {marker}\n")
    agent.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AGENTFARM_CLONE": "1",
        "AGENTFARM_REPO": f"file://{tmp_path / 'missing.git'}",
        "AGENTFARM_BASE_BRANCH": "main",
        "AGENTFARM_BRANCH": "agentfarm/t1",
        "AGENTFARM_WORKSPACE": str(tmp_path / "ws"),
        "AGENTFARM_PUSH": "1",
        "AGENTFARM_RESUME_WAIT": "600",  # a failed clone does not wait for a resume
    }
    done = entrypoint(env, "run", "--", str(agent), timeout=30)
    assert done.returncode == 1
    (first, failed) = parse(done.stdout)
    assert first == ("N", f"cloning file://{tmp_path / 'missing.git'}")
    assert failed[0] == "N"
    reason = lines.clone_failed(failed[1].encode())
    assert reason is not None and reason.startswith("cloning the repository failed: git clone:")
    assert "missing.git" in reason
    assert not marker.exists()
