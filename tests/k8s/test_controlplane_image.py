"""The control-plane image: its build context, and the assembled image started as a pod.

No container engine runs here, so tests/k8s/controlplaneimage.py assembles the image from local
files the way deploy/controlplane/Dockerfile builds it, and the tier-B node runs it as the kit's
Deployment would: uid 1000, read-only root filesystem, the data directory on a volume, the
kubelet's readiness probe on /api/health.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.k8s import cluster, controlplaneimage

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


def test_the_assembled_image_starts_and_serves_the_cockpit(
    k8s_node: cluster.Cluster, tmp_path: Path
) -> None:
    with controlplaneimage.control_plane(k8s_node, tmp_path) as plane:
        print(f"control-plane image: {plane.image_mib} MiB, built and imported in "
              f"{plane.image_seconds:.1f} s; pod created -> Ready "
              f"{plane.ready_seconds:.1f} s")  # fmt: skip
        # Ready: the kubelet's readiness probe (GET /api/health) passed.
        status, health = controlplaneimage.http_get(k8s_node, plane.address, "/api/health")
        assert status == 200, health
        path = "/static/vendor/htmx.min.js"
        status, htmx = controlplaneimage.http_get(k8s_node, plane.address, path)
        assert status == 200, htmx
        assert htmx == (controlplaneimage.vendor_dir() / "htmx.min.js").read_text()
