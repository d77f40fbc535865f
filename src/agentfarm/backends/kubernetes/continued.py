"""The steps of continuing an ended Kubernetes run in a new pod (``KubernetesBackend.
continue_ended``): make room for it (the earlier pod and Secret have its name), wait for it to
run, put the agent's kept session back into its HOME.

The new pod starts an idle first process (:data:`IDLE_ARGV`, which exits at once) so that its
entrypoint waits for ``resume`` as between a parked run's processes (AGENTFARM_RESUME_WAIT):
once it said so, the session goes in (``entrypoint.py session-in``), and the agent then starts
by the same ``resume`` a parked run takes, continuing its session.
"""

from __future__ import annotations

import asyncio
import json

from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.backends.kubernetes import lines, manifests, sessions, status
from agentfarm.domain import errors

#: The continued pod's first process: nothing (the entrypoint then waits for ``resume``).
IDLE_ARGV = ("python3", "-c", "pass")
#: How long the earlier pod may take to go, and the new one to start its agent container.
CLEAR_SECONDS, START_SECONDS = 90.0, 600.0
POLL_SECONDS = 0.5


async def clear(api: k8s_api.Api, namespace: str, name: str) -> None:
    """Delete what is left of the run's earlier pod (finished: its branch was pushed) and its
    Secret, and wait until they are gone: the new ones take their name."""
    await api.delete_pod(namespace, name, grace_seconds=0)
    await api.delete_secret(namespace, name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLEAR_SECONDS
    while await api.get_pod(namespace, name) or await api.get_secret(namespace, name):
        if loop.time() > deadline:
            raise errors.BackendError(
                f"the run's earlier pod {namespace}/{name} was still being deleted after "
                f"{CLEAR_SECONDS:g} s: try to continue the run again in a minute"
            )
        await asyncio.sleep(POLL_SECONDS)


async def wait_idle(api: k8s_api.Api, namespace: str, name: str) -> None:
    """Until the new pod's entrypoint waits for ``resume``: its idle first process has exited
    and it said so (``agentfarm.exited``), after killing what that process left, which would
    also kill a ``session-in`` exec'd before. LaunchError when the pod ends first (its clone
    failed, say) or takes longer than START_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_SECONDS
    while True:
        pod = await api.get_pod(namespace, name)
        if pod is None:
            raise errors.LaunchError(f"the run's new pod {namespace}/{name} was deleted")
        if status.agent_running(pod) and await _said_exited(api, namespace, name):
            return
        view = status.describe(pod)
        if view.exit is not None:
            why = await _clone_failed(api, namespace, name) or view.exit.error
            raise errors.LaunchError(
                f"the run's new pod {namespace}/{name} ended before the agent could resume "
                f"its session: {why or 'exit code ' + str(view.exit.exit_code)}"
            )
        if loop.time() > deadline:
            where = view.notice or "its entrypoint not waiting"
            raise errors.LaunchError(
                f"the run's new pod {namespace}/{name} was not ready within "
                f"{START_SECONDS:g} s ({where})"
            )
        await asyncio.sleep(POLL_SECONDS)


async def _said_exited(api: k8s_api.Api, namespace: str, name: str) -> bool:
    stream = api.pod_log(namespace, name, manifests.AGENT_CONTAINER, follow=False)
    try:
        async for line in stream:
            _, kind, data = lines.parse_line(line)
            if kind == "notice" and data.startswith(lines.EXITED_NOTICE):
                return True
    finally:
        await stream.aclose()
    return False


async def _clone_failed(api: k8s_api.Api, namespace: str, name: str) -> str | None:
    """The entrypoint's word that its clone failed (git's reason), if it said so."""
    stream = api.pod_log(namespace, name, manifests.AGENT_CONTAINER, follow=False)
    try:
        async for line in stream:
            _, kind, data = lines.parse_line(line)
            if kind == "notice" and (failed := lines.clone_failed(data)):
                return failed
    except k8s_api.ApiError:
        return None
    finally:
        await stream.aclose()
    return None


async def put_back(api: k8s_api.Api, namespace: str, name: str, bundle: sessions.Bundle) -> int:
    """Put the kept session into the new pod's HOME (``entrypoint.py session-in``): the number
    of files it wrote. BackendError with the pod's reason when it could not."""
    data = bundle.to_bytes()
    out, failure = await api.exec_pod(
        namespace, name, manifests.AGENT_CONTAINER, sessions.IN_ARGV, data,
        seconds=30 + len(data) / (1 << 20),
    )  # fmt: skip
    try:
        reply = json.loads(out.splitlines()[0]) if out.strip() else None
    except ValueError:
        reply = None
    files = reply.get("files") if isinstance(reply, dict) else None
    if not isinstance(reply, dict) or reply.get("ok") is not True or not isinstance(files, int):
        error = reply.get("error") if isinstance(reply, dict) else None
        why = error if isinstance(error, str) else failure or "no reply"
        printable = "".join(c if c.isprintable() else " " for c in why[:300])
        raise errors.BackendError(
            f"the agent's session could not be put back into the run's new pod "
            f"{namespace}/{name}: {printable}"
        )
    return files
