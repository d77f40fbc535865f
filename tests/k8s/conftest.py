"""Fixtures for tests under tests/k8s: a real Kubernetes API server (tier A) and a real single
node (tier B), each started once per session from the binaries scripts/k8s-testenv/build.sh
caches, and stopped (processes, namespaces, cgroups) however the tests end.

- ``k8s_api`` (tier A, no root): :class:`tests.k8s.cluster.Cluster` with ``.kubeconfig``,
  ``.server``, ``.admin_token``, ``.ca_file``, ``.create_namespace()``,
  ``.service_account_access(namespace, rules)``, ``.request()`` and ``.kubectl()``.
- ``k8s_node`` (tier B, root): the same shape plus ``.import_image(tarball)``,
  ``.runtime_class`` ("crun", the stand-in for kata-fc), ``.busybox_image`` and ``.node_name``.

Every test in this directory gets the ``k8s`` marker.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import realparts
from tests.k8s import cluster

HERE = Path(__file__).parent
PART = "Kubernetes test cluster"
HOW = "run scripts/k8s-testenv/build.sh (make test does it)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.k8s)


def _run(tier: str, workdir: Path) -> Iterator[cluster.Cluster]:
    if missing := cluster.missing_binaries():
        realparts.missing(PART, f"{HOW}; missing: {', '.join(missing)}")
    try:
        running = cluster.start_api(workdir) if tier == "api" else cluster.start_node(workdir)
    except cluster.ClusterError as error:
        realparts.missing(PART, f"{HOW}; tier {tier} did not come up: {error}")
    try:
        yield running
    finally:
        problems = cluster.stop(running)
        # Container layers and images can be large; the logs and configs stay for debugging.
        shutil.rmtree(workdir / "nsroot", ignore_errors=True)
        if problems:
            pytest.fail(f"k8s {tier} teardown left: {'; '.join(problems)}", pytrace=False)


@pytest.fixture(scope="session")
def k8s_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.Cluster]:
    """Tier A: etcd + kube-apiserver (about 4 s to start, about 360 MiB)."""
    yield from _run("api", tmp_path_factory.mktemp("k8s-api"))


@pytest.fixture(scope="session")
def k8s_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.Cluster]:
    """Tier B: a full single node in private namespaces (root; about 9 s to start, 630 MiB)."""
    yield from _run("node", tmp_path_factory.mktemp("k8s-node"))
