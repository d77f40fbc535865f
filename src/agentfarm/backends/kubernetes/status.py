"""What a pod's status means for its run: a notice while it starts, then an exit.

Pure functions over the pod as JSON (what a GET or a watch returns), so they are tested on
hand-written states and, in tests/k8s, on states a test writes through the status subresource
playing the kubelet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentfarm.backends.base import ExitInfo
from agentfarm.backends.kubernetes.manifests import AGENT_CONTAINER, CLONE_CONTAINER

Json = dict[str, Any]

#: Waiting reasons that never resolve by themselves: the run fails and the pod is removed.
FATAL_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull"})
PULL_TROUBLE = frozenset({"ErrImagePull", "ImagePullBackOff"})


@dataclass(frozen=True)
class PodView:
    #: Where the pod is before the agent runs, as a sentence (one notice per change).
    notice: str | None = None
    #: The agent container has started (its log can be read).
    agent_started: bool = False
    #: The run is over; ``pod_done`` is False when the pod still needs deleting.
    exit: ExitInfo | None = None
    pod_done: bool = True


def gone(*, stopping: bool) -> ExitInfo:
    """The pod no longer exists."""
    if stopping:
        return ExitInfo(exit_code=None, signal=15, stopped=True)
    return ExitInfo(
        exit_code=None,
        lost=True,
        error="the agent's pod was deleted outside agentfarm before it finished",
    )


def describe(pod: Json, *, stopping: bool = False) -> PodView:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    clone = _container_status(status.get("initContainerStatuses"), CLONE_CONTAINER)
    agent = _container_status(status.get("containerStatuses"), AGENT_CONTAINER)
    agent_state = agent.get("state") or {}
    started = "running" in agent_state or "terminated" in agent_state
    deleting = bool(meta.get("deletionTimestamp"))

    terminated = agent_state.get("terminated")
    if terminated is not None:
        return PodView(agent_started=True, exit=_from_terminated(pod, terminated, stopping))
    if phase in ("Failed", "Succeeded"):
        return PodView(agent_started=started, exit=_pod_failed(pod, clone, stopping))
    if deleting:
        # Deleted before the agent's container ended (or started): it will not come back.
        if not started:
            return PodView(exit=gone(stopping=stopping), pod_done=True)
        return PodView(agent_started=True, notice="the pod is being deleted")
    if started:
        return PodView(agent_started=True)
    for cs, what in ((agent, "the agent"), (clone, "the clone step")):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FATAL_WAITING:
            error = f"cannot start {what}: {reason}: {waiting.get('message') or cs.get('image')}"
            return PodView(exit=ExitInfo(exit_code=None, error=error), pod_done=False)
    return PodView(notice=_starting_notice(pod, clone, agent))


def _starting_notice(pod: Json, clone: Json, agent: Json) -> str:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    node = spec.get("nodeName")
    image = _image(pod)
    if not node:
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                why = cond.get("message") or cond.get("reason") or "no node fits"
                return f"waiting for a node: {why}"
        return "waiting for a node"
    clone_state = clone.get("state") or {}
    if "running" in clone_state:
        return f"cloning the repository on node {node}"
    for cs in (clone, agent):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in PULL_TROUBLE:
            return f"cannot pull image {image} ({reason}), retrying: {waiting.get('message', '')}"
        if reason in ("CreateContainerConfigError", "CreateContainerError", "RunContainerError"):
            return f"cannot create the container ({reason}): {waiting.get('message', '')}"
    if "terminated" in clone_state:
        return f"starting the agent on node {node}"
    return f"scheduled on node {node}: pulling image {image} and creating the pod"


def _from_terminated(pod: Json, terminated: Json, stopping: bool) -> ExitInfo:
    status = pod.get("status") or {}
    code = terminated.get("exitCode")
    signal = terminated.get("signal") or None
    if signal is None and isinstance(code, int) and 128 < code <= 128 + 64:
        signal = code - 128
    if stopping:
        return ExitInfo(exit_code=code, signal=signal, stopped=True)
    if status.get("reason") == "Evicted":
        return ExitInfo(
            exit_code=code,
            signal=signal,
            error=f"the pod was evicted: {status.get('message') or 'node pressure'}",
        )
    if terminated.get("reason") == "OOMKilled":
        limit = _memory_limit(pod)
        return ExitInfo(
            exit_code=code,
            signal=signal,
            oom_killed=True,
            error=f"the agent ran out of memory (limit {limit}) and was killed; "
            "raise kubernetes.resources.limits.memory",
        )
    if (pod.get("metadata") or {}).get("deletionTimestamp") and code != 0:
        return gone(stopping=False)
    return ExitInfo(exit_code=code, signal=signal)


def _pod_failed(pod: Json, clone: Json, stopping: bool) -> ExitInfo:
    status = pod.get("status") or {}
    if stopping:
        return ExitInfo(exit_code=None, signal=15, stopped=True)
    if status.get("reason") == "Evicted":
        why = status.get("message") or "node pressure"
        return ExitInfo(exit_code=None, error=f"the pod was evicted: {why}")
    terminated = (clone.get("state") or {}).get("terminated")
    if terminated and terminated.get("exitCode") != 0:
        detail = (terminated.get("message") or "").strip().splitlines()
        tail = detail[-1] if detail else f"exit code {terminated.get('exitCode')}"
        return ExitInfo(exit_code=None, error=f"cloning the repository failed: {tail}")
    reason = status.get("reason") or status.get("phase")
    message = status.get("message") or "no message"
    return ExitInfo(
        exit_code=None, error=f"the pod failed before the agent ran: {reason}: {message}"
    )


def agent_running(pod: Json) -> bool:
    """The agent container runs (its pod not being deleted)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    agent = _container_status(status.get("containerStatuses"), AGENT_CONTAINER)
    return "running" in (agent.get("state") or {})


def _container_status(statuses: list[Json] | None, name: str) -> Json:
    for cs in statuses or []:
        if cs.get("name") == name:
            return cs
    return {}


def _image(pod: Json) -> str:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == AGENT_CONTAINER:
            return str(container.get("image"))
    return "?"


def _memory_limit(pod: Json) -> str:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == AGENT_CONTAINER:
            limits = (container.get("resources") or {}).get("limits") or {}
            return str(limits.get("memory", "none"))
    return "none"
