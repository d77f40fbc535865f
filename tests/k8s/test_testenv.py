"""Smoke tests of the Kubernetes test environment itself: what each tier is trusted to do."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.k8s import cluster

pytestmark = pytest.mark.k8s


async def _core(target: cluster.Cluster, kubeconfig: Path | None = None) -> Any:
    api_client = await config.new_client_from_config(
        config_file=str(kubeconfig or target.kubeconfig), persist_config=False
    )
    return client.CoreV1Api(api_client)


@pytest.fixture
async def core_api(k8s_api: cluster.Cluster) -> AsyncIterator[Any]:
    api = await _core(k8s_api)
    yield api
    await api.api_client.close()


@pytest.fixture
async def core_node(k8s_node: cluster.Cluster) -> AsyncIterator[Any]:
    api = await _core(k8s_node)
    yield api
    await api.api_client.close()


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": spec.pop("image", cluster.BUSYBOX_IMAGE)}
    container |= spec.pop("container", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container], "restartPolicy": "Never", **spec},
    }


async def _wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- tier A -------------------------------------------------------------------------------------


async def test_api_accepts_pod_secret_and_runtime_class(
    k8s_api: cluster.Cluster, core_api: Any
) -> None:
    ns = k8s_api.create_namespace()
    node_api = client.NodeV1Api(core_api.api_client)
    runtime_class = f"rc-{ns}"
    await node_api.create_runtime_class(
        client.V1RuntimeClass(metadata=client.V1ObjectMeta(name=runtime_class), handler="kata-fc")
    )
    secret = {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    await core_api.create_namespaced_secret(ns, secret)
    pod = _pod("agent", runtimeClassName=runtime_class)
    created = await core_api.create_namespaced_pod(ns, pod)

    assert created.spec.runtime_class_name == runtime_class
    assert created.metadata.resource_version
    read = await core_api.read_namespaced_secret("creds", ns)
    assert read.data["token"] == "czNjcmV0"  # base64 of s3cret: stringData was stored


async def test_api_rejects_pod_naming_missing_runtime_class(
    k8s_api: cluster.Cluster, core_api: Any
) -> None:
    ns = k8s_api.create_namespace()
    with pytest.raises(ApiException) as raised:
        await core_api.create_namespaced_pod(ns, _pod("agent", runtimeClassName="kata-missing"))
    assert raised.value.status == 403
    message = json.loads(raised.value.body or "{}")["message"]
    assert 'RuntimeClass "kata-missing" not found' in message


async def test_api_rbac_denies_a_token_lacking_the_verb(k8s_api: cluster.Cluster) -> None:
    ns = k8s_api.create_namespace("rbac")
    read_only = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    access = k8s_api.service_account_access(ns, read_only)
    api = await _core(k8s_api, access.kubeconfig)
    try:
        pods = await api.list_namespaced_pod(ns)
        assert pods.items == []
        with pytest.raises(ApiException) as raised:
            await api.create_namespaced_pod(ns, _pod("agent"))
        assert raised.value.status == 403
        with pytest.raises(ApiException) as raised:
            await api.list_namespaced_secret(ns)
        assert raised.value.status == 403
    finally:
        await api.api_client.close()


async def test_api_watch_sees_status_patched_by_a_test_playing_kubelet(
    k8s_api: cluster.Cluster, core_api: Any
) -> None:
    ns = k8s_api.create_namespace()
    created = await core_api.create_namespaced_pod(ns, _pod("agent"))
    seen: list[tuple[str, str | None]] = []

    async def follow() -> None:
        async with watch.Watch().stream(
            core_api.list_namespaced_pod, ns, resource_version="0", timeout_seconds=20
        ) as stream:
            async for event in stream:
                seen.append((event["type"], event["object"].status.phase))
                if event["object"].status.phase == "Running":
                    return

    watcher = asyncio.create_task(follow())
    await _wait_for("the ADDED event", lambda: asyncio.sleep(0, result=bool(seen)), 10)
    await core_api.patch_namespaced_pod_status(
        "agent", ns, {"status": {"phase": "Running", "podIP": "10.244.0.9"}}
    )
    await asyncio.wait_for(watcher, 20)

    assert seen[0] == ("ADDED", "Pending")
    assert seen[-1] == ("MODIFIED", "Running")
    after = await core_api.read_namespaced_pod("agent", ns)
    assert int(after.metadata.resource_version) > int(created.metadata.resource_version)


# --- tier B -------------------------------------------------------------------------------------


async def _phase(core: Any, ns: str, name: str, *phases: str) -> Any:
    pod = await core.read_namespaced_pod(name, ns)
    return pod if pod.status.phase in phases else None


async def test_node_runs_a_crun_pod_to_completion_with_readable_logs(
    k8s_node: cluster.Cluster, core_node: Any
) -> None:
    ns = k8s_node.create_namespace()
    pod = _pod(
        "hello",
        runtimeClassName=k8s_node.runtime_class,
        image=k8s_node.busybox_image,
        container={"command": ["sh", "-c", "echo hello $((6 * 7)); echo from $(hostname)"]},
    )
    await core_node.create_namespaced_pod(ns, pod)

    done = await _wait_for(
        "pod Succeeded",
        lambda: _phase(core_node, ns, "hello", "Succeeded", "Failed"),
        90,
    )
    assert done.status.phase == "Succeeded"
    assert done.spec.node_name == k8s_node.node_name
    logs = await core_node.read_namespaced_pod_log("hello", ns)
    assert logs == "hello 42\nfrom hello\n"


async def test_node_graceful_delete(k8s_node: cluster.Cluster, core_node: Any) -> None:
    ns = k8s_node.create_namespace()
    script = "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.2; done"
    pod = _pod(
        "sleeper",
        runtimeClassName=k8s_node.runtime_class,
        image=k8s_node.busybox_image,
        container={"command": ["sh", "-c", script]},
        terminationGracePeriodSeconds=30,
    )
    await core_node.create_namespaced_pod(ns, pod)
    running = await _wait_for(
        "pod Running", lambda: _phase(core_node, ns, "sleeper", "Running"), 90
    )

    exit_codes: list[int] = []
    started = time.monotonic()
    await core_node.delete_namespaced_pod("sleeper", ns)
    # A watch sees every status the kubelet writes before the object goes (8-40 s seen).
    async with watch.Watch().stream(
        core_node.list_namespaced_pod,
        ns,
        resource_version=running.metadata.resource_version,
        timeout_seconds=60,
    ) as stream:
        async for event in stream:
            for status in event["object"].status.container_statuses or []:
                if status.state.terminated:
                    exit_codes.append(status.state.terminated.exit_code)
            if event["type"] == "DELETED":
                break
        else:
            raise AssertionError("the pod was not deleted within 60 s")

    # SIGTERM reached the shell, whose trap exited 0 at once: no SIGKILL (137) after the grace.
    assert exit_codes
    assert set(exit_codes) == {0}
    assert time.monotonic() - started < 30


async def test_node_runs_an_image_built_from_local_files(
    k8s_node: cluster.Cluster, core_node: Any, tmp_path: Path
) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "app").mkdir(parents=True)
    (rootfs / "app" / "greeting").write_text("built locally\n")
    tarball = tmp_path / "image.tar"
    builder = cluster.SCRIPTS / "build-image.py"
    # A dynamically linked Debian binary: --add-binary brings its libraries and loader along.
    subprocess.run(
        [sys.executable, str(builder), "--tag", "agentfarm.local/smoke:1", "-o", str(tarball),
         "--add-binary", "/usr/bin/cat", "--entrypoint", '["/usr/bin/cat"]',
         "--cmd", '["/app/greeting"]', "--user", "65534", str(rootfs)],
        check=True,
    )  # fmt: skip
    k8s_node.import_image(tarball)
    ns = k8s_node.create_namespace()
    pod = _pod("smoke", runtimeClassName=k8s_node.runtime_class, image="agentfarm.local/smoke:1")
    await core_node.create_namespaced_pod(ns, pod)

    done = await _wait_for(
        "pod Succeeded", lambda: _phase(core_node, ns, "smoke", "Succeeded", "Failed"), 90
    )
    assert done.status.phase == "Succeeded"
    assert await core_node.read_namespaced_pod_log("smoke", ns) == "built locally\n"
