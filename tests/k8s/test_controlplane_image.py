"""The control-plane image: its build context, and the assembled image started as a pod.

No container engine runs here, so tests/k8s/controlplaneimage.py assembles the image from local
files the way deploy/controlplane/Dockerfile builds it, and the tier-B node runs it as the kit's
Deployment would: uid 1000, read-only root filesystem, the data directory on a volume, the
kubelet's readiness probe on /api/health.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.k8s import cluster, controlplaneimage
from tests.k8s.test_manifests import all_documents

REPO = controlplaneimage.REPO
DOCKERFILES = [REPO / "deploy" / name / "Dockerfile" for name in ("controlplane", "agent")]
#: Parts of a developer's tree that must never reach an image build.
PRIVATE = [".venv/", ".git/", ".tools/", ".cache/", "tests/", "test-artifacts/", "bench/",
           "src/agentfarm/web/static/vendor/", ".mypy_cache/", ".pytest_cache/"]  # fmt: skip


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_a_clean_clone_gives_every_copy_source(dockerfile: Path) -> None:
    files = controlplaneimage.context(controlplaneimage.clean_clone_files())
    for source in controlplaneimage.copy_sources(dockerfile):
        assert any(f == source or f.startswith(source + "/") for f in files), source


def test_the_context_leaves_the_developer_tree_out() -> None:
    files = controlplaneimage.context(controlplaneimage.tree_files())
    leaked = [f for f in files if any(f.startswith(p) for p in PRIVATE)]
    assert not leaked, leaked[:10]
    sources = {s for d in DOCKERFILES for s in controlplaneimage.copy_sources(d)}
    extra = [f for f in files if not any(f == s or f.startswith(s + "/") for s in sources)]
    assert not extra, f"in the context but copied by no Dockerfile: {extra[:10]}"


def test_the_image_builds_its_cockpit_assets_from_the_lock_file() -> None:
    stages = {s.name: s for s in controlplaneimage.stages()}
    web = stages["web"].instructions
    assert ("RUN", "AGENTFARM_CACHE=/tmp/cache scripts/build-web-vendor.sh") in web
    copied = [rest for word, rest in stages["build"].instructions if word == "COPY"]
    vendor = "src/agentfarm/web/static/vendor"
    assert f"--from=web /src/{vendor} ./{vendor}" in copied
    packaged = controlplaneimage.package_files(REPO)
    for name in ("htmx.min.js", "htmx-ext-sse.min.js"):
        assert f"agentfarm/web/static/vendor/{name}" in packaged


def test_make_images_builds_both_images_and_pushes_nothing() -> None:
    planned = subprocess.run(
        ["make", "-n", "images", "DOCKER=docker", "REGISTRY=example.test/me", "IMAGE_TAG=t1"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    builds = [line for line in planned.splitlines() if line.startswith("docker build")]
    assert len(builds) == 2
    control_plane = "-f deploy/controlplane/Dockerfile -t example.test/me/agentfarm:t1 ."
    assert any(control_plane in b for b in builds)
    assert any("-t example.test/me/agentfarm-agent:t1 ." in b for b in builds)
    assert "push" not in planned


def control_plane_pod(namespace: str) -> dict[str, Any]:
    """The kit's control-plane Deployment as one pod of the test image: the data volume is an
    emptyDir, and the pod needs no ServiceAccount (it talks to no API server here)."""
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in all_documents()}
    template = copy.deepcopy(docs[("Deployment", "agentfarm")]["spec"]["template"])
    spec = template["spec"]
    spec.pop("serviceAccountName")
    spec["automountServiceAccountToken"] = False
    spec["restartPolicy"] = "Never"  # a crash fails the test at once
    spec["volumes"] = [{"name": v["name"], "emptyDir": {}} for v in spec["volumes"]]
    container = spec["containers"][0]
    container["image"] = controlplaneimage.IMAGE
    container["livenessProbe"]["initialDelaySeconds"] = 60
    container["readinessProbe"]["periodSeconds"] = 1
    labels = template["metadata"]["labels"]
    metadata = {"name": "agentfarm", "namespace": namespace, "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def http_get(node: cluster.Cluster, address: str, path: str) -> tuple[int, str]:
    """GET over plain TCP from inside the node's network namespace (where pod IPs route)."""
    request = f"GET {path} HTTP/1.0\r\nHost: localhost:8080\r\n\r\n".encode()
    answer = node.in_namespace(
        "socat", "-t10", "-T10", "-", f"TCP:{address}:8080,shut-none", input=request
    )
    head, _, body = answer.partition("\r\n\r\n")
    if not head.startswith("HTTP/"):
        return 0, f"no HTTP answer from {address}: {answer!r}"
    return int(head.split()[1]), body


async def wait_ready(node: cluster.Cluster, namespace: str, name: str) -> dict[str, Any]:
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    for _ in range(360):
        status, pod = await asyncio.to_thread(node.request, "GET", path)
        assert status == 200, pod
        conditions = pod.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return pod
        statuses = pod.get("status", {}).get("containerStatuses", [])
        if any(s.get("state", {}).get("terminated") for s in statuses):
            log = await asyncio.to_thread(node.kubectl, "-n", namespace, "logs", name, check=False)
            raise AssertionError(f"{name} exited: {statuses}\n{log}")
        await asyncio.sleep(0.5)
    raise AssertionError(f"pod {name} never Ready: {pod.get('status')}")


async def test_the_assembled_image_starts_and_serves_the_cockpit(
    k8s_node: cluster.Cluster, tmp_path: Path
) -> None:
    started = time.monotonic()
    tarball = await asyncio.to_thread(controlplaneimage.build_controlplane_image, tmp_path)
    await asyncio.to_thread(k8s_node.import_image, tarball)
    print(f"control-plane image: {tarball.stat().st_size >> 20} MiB, built and imported in "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    namespace = await asyncio.to_thread(k8s_node.create_namespace, "controlplane")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "agentfarm-api", "namespace": namespace},
        "stringData": {"token": "af_" + "0" * 48},
    }
    try:
        status, body = await asyncio.to_thread(
            k8s_node.request, "POST", f"/api/v1/namespaces/{namespace}/secrets", secret
        )
        assert status == 201, body
        pod = control_plane_pod(namespace)
        status, body = await asyncio.to_thread(
            k8s_node.request, "POST", f"/api/v1/namespaces/{namespace}/pods", pod
        )
        assert status == 201, body
        running = await wait_ready(k8s_node, namespace, "agentfarm")  # the kubelet's probe passed
        address = running["status"]["podIP"]
        status, health = await asyncio.to_thread(http_get, k8s_node, address, "/api/health")
        assert status == 200, health
        status, htmx = await asyncio.to_thread(
            http_get, k8s_node, address, "/static/vendor/htmx.min.js"
        )
        assert status == 200, htmx
        assert htmx == (controlplaneimage.vendor_dir() / "htmx.min.js").read_text()
    except AssertionError:
        log = await asyncio.to_thread(
            k8s_node.kubectl, "-n", namespace, "logs", "agentfarm", check=False
        )
        print(f"control-plane log:\n{log}")
        raise
    finally:
        await asyncio.to_thread(
            k8s_node.kubectl, "delete", "namespace", namespace, "--wait=false", check=False
        )
        await asyncio.to_thread(
            k8s_node.kubectl, "-n", namespace, "delete", "pods", "--all", "--grace-period=0",
            "--force", "--wait=false", check=False,
        )  # fmt: skip
