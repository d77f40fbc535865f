"""The kubernetes backend against a real API server (tier A), run with the kit's Role only.

There is no kubelet here: the test plays it by binding the pod and writing its ``status``
subresource, and the backend must turn those states into notices, ``started`` and the exit.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentfarm.backends.base import Record
from agentfarm.backends.kubernetes import backend as k8s_backend
from agentfarm.backends.kubernetes import manifests
from agentfarm.domain import backend_config, errors, models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests.k8s import cluster

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "rbac.yaml"
COMMAND = AgentCommand(
    argv=["claude", "-p", "--output-format", "stream-json", "--verbose"],
    env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
    stdin=b'{"type":"user","message":{"role":"user","content":"hi"}}\n',
    close_stdin_after=("result",),
)
SECRETS = {"CLAUDE_CODE_OAUTH_TOKEN": "oauth-test-value", "GITHUB_TOKEN": "ghp_test_value"}


def kit_role_rules() -> list[dict[str, Any]]:
    for doc in yaml.safe_load_all(RBAC.read_text()):
        if doc["kind"] == "Role":
            rules: list[dict[str, Any]] = doc["rules"]
            return rules
    raise AssertionError("no Role in the kit")


class Kubelet:
    """Plays the kubelet for one namespace through the admin token."""

    def __init__(self, target: cluster.Cluster, namespace: str) -> None:
        self.target = target
        self.namespace = namespace

    async def _call(self, method: str, path: str, body: Any, content_type: str) -> Any:
        status, result = await asyncio.to_thread(
            self.target.request, method, path, body, content_type=content_type
        )
        assert status < 300, f"{method} {path} -> {status}: {result}"
        return result

    def _pod(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{name}"

    async def bind(self, name: str, node: str = "node-1") -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        await self._call("POST", self._pod(name) + "/binding", body, "application/json")

    async def status(self, name: str, **status: Any) -> None:
        patch = {"status": status}
        await self._call(
            "PATCH", self._pod(name) + "/status", patch, "application/merge-patch+json"
        )

    async def get(self, path: str) -> tuple[int, Any]:
        return await asyncio.to_thread(self.target.request, "GET", path)

    async def force_delete(self, name: str) -> None:
        body = {"gracePeriodSeconds": 0}
        await self._call("DELETE", self._pod(name), body, "application/json")


def cs(name: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "ready": "running" in state,
        "restartCount": 0,
        "image": "agentfarm.local/agent:1",
        "imageID": "",
    }


@pytest.fixture
async def env(
    k8s_api: cluster.Cluster,
) -> tuple[Settings, Kubelet, cluster.ScopedAccess]:
    namespace = k8s_api.create_namespace("agents")
    access = await asyncio.to_thread(
        k8s_api.service_account_access, namespace, kit_role_rules(), name="agentfarm"
    )
    settings = Settings(
        k8s_kubeconfig=access.kubeconfig,
        k8s_namespace=namespace,
        k8s_image="agentfarm.local/agent:1",
        k8s_instance="test",
        k8s_cleanup_after_seconds=0,
        stop_grace_seconds=2,
    )
    return settings, Kubelet(k8s_api, namespace), access


@pytest.fixture
async def backend(
    env: tuple[Settings, Kubelet, Any],
) -> AsyncIterator[k8s_backend.KubernetesBackend]:
    b = k8s_backend.KubernetesBackend(env[0])
    yield b
    await b.aclose()


def new_run() -> models.Run:
    spec = models.AgentSpec(
        repo="https://github.com/example/repo.git", backend="kubernetes", prompt="hi"
    )
    return models.Run(spec=spec, config_name="demo")


async def take(records: AsyncIterator[Record], until: str, timeout: float = 30) -> list[Record]:
    """Records up to and including the first of kind ``until``."""
    out: list[Record] = []
    async with asyncio.timeout(timeout):
        async for record in records:
            out.append(record)
            if record.kind == until:
                break
    return out


async def test_launch_creates_pod_and_secret_the_server_accepts(
    backend: k8s_backend.KubernetesBackend, env: tuple[Settings, Kubelet, Any]
) -> None:
    settings, kubelet, _ = env
    run = new_run()
    other_host = {"GIT_TOKEN_GITLAB_EXAMPLE_ORG": "gl-other-host"}
    handle, info = await backend.launch(run, LaunchSpec.of(run.id, COMMAND, SECRETS | other_host))
    name = manifests.object_name(run.id)
    assert info.branch == f"agentfarm/{run.id}"
    ns = settings.k8s_namespace
    status, pod = await kubelet.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    assert status == 200
    assert pod["metadata"]["labels"][manifests.LABEL_RUN] == run.id
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert "oauth-test-value" not in str(pod)
    assert "ghp_test_value" not in str(pod) and "gl-other-host" not in str(pod)
    status, secret = await kubelet.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
    assert status == 200
    assert base64.b64decode(secret["data"][manifests.STDIN_KEY]) == COMMAND.stdin
    # the git token for the run's host travels in the Secret; another host's stays home
    assert base64.b64decode(secret["data"]["GITHUB_TOKEN"]) == b"ghp_test_value"
    assert "GIT_TOKEN_GITLAB_EXAMPLE_ORG" not in secret["data"]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    # A follow-up goes through an exec in the pod (the kit's Role allows it); this tier has no
    # kubelet to run it, which the error says (the node tier runs it for real).
    with pytest.raises(errors.BackendError, match="cannot reach the agent of run"):
        await handle.send(b"more")
    await backend.cleanup(run)
    status, _ = await kubelet.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
    assert status == 404


async def test_a_rejected_pod_is_a_clear_launch_error(
    backend: k8s_backend.KubernetesBackend, env: tuple[Settings, Kubelet, Any]
) -> None:
    run = new_run()
    run.spec.backend = backend_config.KubernetesSpec(runtime_class="no-such-class")
    with pytest.raises(errors.LaunchError, match="no-such-class"):
        await backend.launch(run, LaunchSpec.of(run.id, COMMAND, SECRETS))
    status, _ = await env[1].get(
        f"/api/v1/namespaces/{env[0].k8s_namespace}/secrets/{manifests.object_name(run.id)}"
    )
    assert status == 404  # the Secret made before the pod was refused is gone again


async def test_the_role_is_enough_and_no_more(
    env: tuple[Settings, Kubelet, cluster.ScopedAccess],
) -> None:
    settings, kubelet, access = env
    for verb, path in (
        ("GET", f"/api/v1/namespaces/{settings.k8s_namespace}/secrets"),  # list secrets
        ("GET", f"/api/v1/namespaces/{settings.k8s_namespace}/configmaps"),
        ("GET", "/api/v1/namespaces/default/pods"),
        ("GET", "/api/v1/nodes"),
    ):
        status, _ = await asyncio.to_thread(kubelet.target.request, verb, path, token=access.token)
        assert status == 403, path
    patch = {"metadata": {"labels": {"x": "y"}}}
    status, _ = await asyncio.to_thread(
        kubelet.target.request, "PATCH", f"/api/v1/namespaces/{settings.k8s_namespace}/pods/p",
        patch, token=access.token, content_type="application/merge-patch+json",
    )  # fmt: skip
    assert status == 403


async def test_status_from_the_kubelet_becomes_notices_started_and_exit(
    backend: k8s_backend.KubernetesBackend, env: tuple[Settings, Kubelet, Any]
) -> None:
    kubelet = env[1]
    run = new_run()
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, COMMAND, SECRETS))
    name = manifests.object_name(run.id)
    records = handle.records(after=0)
    got: list[Record] = []

    async def step(**status: Any) -> None:
        await kubelet.status(name, **status)
        got.append(await asyncio.wait_for(anext(records), 15))

    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/1 nodes are available: 1 Insufficient memory."}  # fmt: skip
    got.append(await asyncio.wait_for(anext(records), 15))  # "waiting for a node"
    await step(phase="Pending", conditions=[unschedulable])
    await kubelet.bind(name)
    got.append(await asyncio.wait_for(anext(records), 15))  # scheduled
    pull = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
    await step(initContainerStatuses=[cs("clone", pull)])
    await step(
        initContainerStatuses=[cs("clone", {"running": {"startedAt": "2026-01-01T00:00:00Z"}})]
    )
    done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    running = {"running": {"startedAt": "2026-01-01T00:00:01Z"}}
    await step(phase="Running", initContainerStatuses=[cs("clone", done)],
               containerStatuses=[cs("agent", running)])  # fmt: skip
    finished = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    await kubelet.status(name, phase="Succeeded", containerStatuses=[cs("agent", finished)])
    got += await take(records, "exit")
    notices = [r.data.decode() for r in got if r.kind == "notice"]
    assert notices[0] == "waiting for a node"
    assert notices[1] == "waiting for a node: 0/1 nodes are available: 1 Insufficient memory."
    assert notices[2].startswith("scheduled on node node-1")
    assert notices[3].startswith("cannot pull image agentfarm.local/agent:1 (ImagePullBackOff)")
    assert notices[4] == "cloning the repository on node node-1"
    kinds = [r.kind for r in got]
    assert kinds[-2:] == ["started", "exit"]
    exit_info = got[-1].exit
    assert exit_info is not None
    assert exit_info.exit_code == 0
    assert not exit_info.lost
    assert not exit_info.stopped
    assert not exit_info.oom_killed
    cursors = [r.cursor for r in got]
    assert cursors == sorted(set(cursors))
    # The supervisor finalizes every ended run: its Secret goes, and (cleanup time 0) its pod.
    assert await handle.finalize() == []
    base = f"/api/v1/namespaces/{env[0].k8s_namespace}"
    assert (await env[1].get(f"{base}/secrets/{name}"))[0] == 404
    assert (await env[1].get(f"{base}/pods/{name}"))[0] == 404
    await backend.cleanup(run)


@pytest.mark.parametrize(
    ("status", "check"),
    [
        (
            {"phase": "Failed", "containerStatuses": [
                cs("agent", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})]},
            lambda e: e.oom_killed and "out of memory" in e.error,
        ),
        (
            {"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."},
            lambda e: e.error == "the pod was evicted: The node was low on memory.",
        ),
        (
            {"phase": "Failed", "initContainerStatuses": [cs("clone", {"terminated": {
                "exitCode": 1, "message": "git clone: fatal: repository not found"}})]},
            lambda e: e.error.endswith("failed: git clone: fatal: repository not found"),
        ),
    ],
    ids=["oom-killed", "evicted", "clone-failed"],
)  # fmt: skip
async def test_failures_map_to_clear_errors(
    backend: k8s_backend.KubernetesBackend,
    env: tuple[Settings, Kubelet, Any],
    status: dict[str, Any],
    check: Any,
) -> None:
    run = new_run()
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, COMMAND, SECRETS))
    name = manifests.object_name(run.id)
    await env[1].bind(name)
    await env[1].status(name, **status)
    got = await take(handle.records(after=0), "exit")
    assert got[-1].exit is not None
    assert check(got[-1].exit), got[-1].exit
    await backend.cleanup(run)


async def test_pod_deleted_behind_our_back_ends_lost(
    backend: k8s_backend.KubernetesBackend, env: tuple[Settings, Kubelet, Any]
) -> None:
    run = new_run()
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, COMMAND, SECRETS))
    name = manifests.object_name(run.id)
    records = handle.records(after=0)
    await asyncio.wait_for(anext(records), 15)
    await env[1].force_delete(name)
    got = await take(records, "exit")
    assert got[-1].exit is not None
    assert got[-1].exit.lost
    assert "deleted outside agentfarm" in (got[-1].exit.error or "")


async def test_stop_deletes_the_pod_and_ends_stopped(
    backend: k8s_backend.KubernetesBackend, env: tuple[Settings, Kubelet, Any]
) -> None:
    run = new_run()
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, COMMAND, SECRETS))
    records = handle.records(after=0)
    await asyncio.wait_for(anext(records), 15)
    await handle.stop(grace=1)
    got = await take(records, "exit")
    assert got[-1].exit is not None
    assert got[-1].exit.stopped
    status, _ = await env[1].get(
        f"/api/v1/namespaces/{env[0].k8s_namespace}/pods/{manifests.object_name(run.id)}"
    )
    assert status == 404


async def test_restart_reattaches_by_label_without_loss_or_doubles(
    env: tuple[Settings, Kubelet, Any],
) -> None:
    settings, kubelet, _ = env
    run = new_run()
    first = k8s_backend.KubernetesBackend(settings)
    try:
        handle, _ = await first.launch(run, LaunchSpec.of(run.id, COMMAND, SECRETS))
        name = manifests.object_name(run.id)
        records = handle.records(after=0)
        before = [await asyncio.wait_for(anext(records), 15)]
        await kubelet.bind(name)
        before.append(await asyncio.wait_for(anext(records), 15))
        await records.aclose()  # type: ignore[attr-defined]
    finally:
        await first.aclose()  # the control plane goes away
    cursor = before[-1].cursor
    running = {"running": {"startedAt": "2026-01-01T00:00:01Z"}}
    await kubelet.status(name, phase="Running", containerStatuses=[cs("agent", running)])

    second = k8s_backend.KubernetesBackend(settings)
    try:
        again, _ = await second.attach(run)
        records = again.records(after=cursor)
        started = await asyncio.wait_for(anext(records), 15)
        assert started.kind == "started"
        assert started.cursor > cursor
        finished = {"terminated": {"exitCode": 3, "reason": "Error"}}
        await kubelet.status(name, phase="Failed", containerStatuses=[cs("agent", finished)])
        rest = await take(records, "exit")
        assert [r.kind for r in rest] == ["exit"]
        assert rest[-1].exit is not None
        assert rest[-1].exit.exit_code == 3
        # Replaying everything from the start gives the same records, in the same places.
        replay = await take(again.records(after=0), "exit")
        assert [r.cursor for r in replay if r.kind in ("started", "exit")] == [
            started.cursor,
            rest[-1].cursor,
        ]
        await second.cleanup(run)
    finally:
        await second.aclose()


async def test_attach_to_a_vanished_pod_ends_lost(backend: k8s_backend.KubernetesBackend) -> None:
    handle, _ = await backend.attach(new_run())
    got = await take(handle.records(after=0), "exit")
    assert len(got) == 1
    assert got[0].exit is not None
    assert got[0].exit.lost


async def test_sweep_removes_only_finished_and_cleaned_up_pods(
    env: tuple[Settings, Kubelet, Any],
) -> None:
    settings, kubelet, _ = env
    settings = settings.model_copy(update={"k8s_cleanup_after_seconds": 60})
    b = k8s_backend.KubernetesBackend(settings)
    try:
        done, kept = new_run(), new_run()
        for run in (done, kept):
            await b.launch(run, LaunchSpec.of(run.id, COMMAND, SECRETS))
            finished = {"terminated": {"exitCode": 0, "finishedAt": "2026-01-01T00:00:00Z"}}
            await kubelet.bind(manifests.object_name(run.id))
            await kubelet.status(
                manifests.object_name(run.id), phase="Succeeded",
                containerStatuses=[cs("agent", finished)],
            )  # fmt: skip
        await b.cleanup(done)  # its Secret goes now, its pod after the cleanup time
        early = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
        assert await b.sweep(now=early) == []
        late = early + timedelta(hours=1)
        assert await b.sweep(now=late) == [manifests.object_name(done.id)]
    finally:
        await b.aclose()
