"""Every manifest of the deploy kit is accepted by a real API server (server-side dry run).

The kit keeps to plain YAML files listed under ``resources:`` and :func:`resolve` reads that
list (recursively, for nested kustomizations); the kustomize built into the cached kubectl
(1.20) renders the same documents, and its output is applied with a server dry run too. Kinds
whose CRDs this server does not have (ExternalSecret) are skipped by name, with the reason.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import cluster

KIT = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
#: (apiVersion, kind) -> (URL prefix, plural, namespaced)
ROUTES: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "Pod"): ("/api/v1", "pods", True),
    ("v1", "PersistentVolume"): ("/api/v1", "persistentvolumes", False),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims", True),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments", True),
    ("apps/v1", "DaemonSet"): ("/apis/apps/v1", "daemonsets", True),
    ("node.k8s.io/v1", "RuntimeClass"): ("/apis/node.k8s.io/v1", "runtimeclasses", False),
    ("networking.k8s.io/v1", "Ingress"): ("/apis/networking.k8s.io/v1", "ingresses", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): (
        "/apis/networking.k8s.io/v1",
        "networkpolicies",
        True,
    ),
}
for _kind, _plural, _ns in (
    ("Role", "roles", True),
    ("RoleBinding", "rolebindings", True),
    ("ClusterRole", "clusterroles", False),
    ("ClusterRoleBinding", "clusterrolebindings", False),
):
    ROUTES[("rbac.authorization.k8s.io/v1", _kind)] = (
        "/apis/rbac.authorization.k8s.io/v1",
        _plural,
        _ns,
    )
#: CRD kinds the test server does not serve: the kit's use of them is not checked here.
NOT_SERVED = {"ExternalSecret": "the External Secrets Operator's CRD is not installed"}


def resolve(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The documents a ``kubectl apply -k directory`` would send, in order (plain resources)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources"}
    assert not unsupported, f"the kit must stay plain YAML; found {sorted(unsupported)}"
    docs: list[tuple[Path, dict[str, Any]]] = []
    for entry in kustomization.get("resources") or []:
        path = directory / entry
        if path.is_dir():
            docs += resolve(path)
            continue
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def all_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = resolve(KIT)
    for extra in sorted((KIT / "extras").glob("*.yaml")):
        docs += [(extra, d) for d in yaml.safe_load_all(extra.read_text()) if d]
    return docs


def url(doc: dict[str, Any], *, collection: bool) -> str:
    prefix, plural, namespaced = ROUTES[(doc["apiVersion"], doc["kind"])]
    base = prefix
    if namespaced:
        base += f"/namespaces/{doc['metadata'].get('namespace', 'default')}"
    return f"{base}/{plural}" if collection else f"{base}/{plural}/{doc['metadata']['name']}"


def test_kustomization_lists_every_base_file() -> None:
    listed = {path for path, _ in resolve(KIT)}
    assert listed == set((KIT / "base").glob("*.yaml"))


def test_every_kind_is_known_or_skipped_with_a_reason() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in all_documents()}
    unknown = {k for k in kinds if k not in ROUTES and k[1] not in NOT_SERVED}
    assert not unknown


async def test_kit_is_accepted_by_the_server(k8s_api: cluster.Cluster) -> None:
    def apply(doc: dict[str, Any], dry: bool) -> tuple[int, Any]:
        suffix = "?dryRun=All" if dry else ""
        return k8s_api.request("POST", url(doc, collection=True) + suffix, doc)

    docs = all_documents()
    skipped: list[str] = []
    # Namespaces are created for real: namespaced dry runs need them to exist.
    for _, doc in docs:
        if doc["kind"] == "Namespace":
            status, body = await asyncio.to_thread(apply, doc, False)
            assert status in (201, 409), body
    for path, doc in docs:
        if doc["kind"] in NOT_SERVED:
            skipped.append(f"{doc['kind']} {doc['metadata']['name']}: {NOT_SERVED[doc['kind']]}")
            continue
        if doc["kind"] == "Namespace":
            continue
        status, body = await asyncio.to_thread(apply, doc, True)
        where = f"{path.relative_to(KIT)}: {doc['kind']} {doc['metadata']['name']}"
        if status == 409:  # already there from an earlier test in this session: still valid
            continue
        assert status in (200, 201), f"{where} rejected: {body}"
        assert body["metadata"]["name"] == doc["metadata"]["name"], where
    assert all(s.startswith("ExternalSecret") for s in skipped)
    assert len(skipped) == 3


def test_control_plane_deployment_shape() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in all_documents()}
    deployment = docs[("Deployment", "agentfarm")]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    pod = deployment["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["fsGroup"] == 1000
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health"
    for probe in ("livenessProbe", "readinessProbe"):  # a Host allow-list knows loopback names
        assert {"name": "Host", "value": "localhost"} in container[probe]["httpGet"]["httpHeaders"]
    assert container["resources"]["limits"]
    claim = docs[("PersistentVolumeClaim", "claude-home")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("name", ["kata-fc", "kata-qemu"])
def test_runtime_classes(name: str) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in all_documents()}
    assert docs[("RuntimeClass", name)]["handler"] == name


def _with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A NetworkPolicy spec as the API server stores it: ports default to protocol TCP."""
    out = json.loads(json.dumps(spec))
    for key in ("egress", "ingress"):
        for rule in out.get(key) or []:
            for port in rule.get("ports") or []:
                port.setdefault("protocol", "TCP")
    return out


async def test_agent_network_policies_reach_the_server_unchanged(k8s_api: cluster.Cluster) -> None:
    """The agents' NetworkPolicies, created for real in a test namespace, come back exactly as
    written: the server dropped no field it does not know (tests/unit/test_kit_network_policy.py
    evaluates what they allow; no test cluster here enforces them)."""
    namespace = await asyncio.to_thread(k8s_api.create_namespace, "netpol")
    policies = [d for _, d in resolve(KIT) if d["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["namespace"] for p in policies} == {"agentfarm-agents"}
    assert len(policies) >= 3
    for policy in policies:
        doc = json.loads(json.dumps(policy))
        doc["metadata"]["namespace"] = namespace
        status, body = await asyncio.to_thread(
            k8s_api.request, "POST", url(doc, collection=True), doc
        )
        assert status == 201, body
        status, stored = await asyncio.to_thread(k8s_api.request, "GET", url(doc, collection=False))
        assert status == 200, stored
        assert stored["spec"] == _with_defaults(policy["spec"]), policy["metadata"]["name"]


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return (doc["kind"], meta.get("namespace", ""), meta["name"])


async def test_kustomize_renders_the_kit_and_the_server_accepts_it(
    k8s_api: cluster.Cluster,
) -> None:
    """kubectl's own kustomize (offline) renders exactly what :func:`resolve` reads, and the
    server accepts the rendered stream as ``kubectl apply -k`` would send it (server dry run;
    the namespaces are created for real first)."""
    rendered_text = await asyncio.to_thread(k8s_api.kubectl, "kustomize", str(KIT))
    rendered = {_key(d): d for d in yaml.safe_load_all(rendered_text) if d}
    read = {_key(d): d for _, d in resolve(KIT)}
    assert rendered == read
    for doc in read.values():
        if doc["kind"] == "Namespace":
            status, body = await asyncio.to_thread(
                k8s_api.request, "POST", url(doc, collection=True), doc
            )
            assert status in (201, 409), body
    applied = await asyncio.to_thread(
        k8s_api.kubectl, "apply", "--dry-run=server", "-f", "-", input=rendered_text
    )
    # "networkpolicy.networking.k8s.io/agents-default-deny created (server dry run)"
    accepted = set()
    for line in applied.splitlines():
        resource, _, outcome = line.partition(" ")
        assert outcome.endswith("(server dry run)"), line
        kind, _, name = resource.partition("/")
        accepted.add((kind.split(".")[0], name))
    assert accepted == {(kind.lower(), name) for kind, _, name in read}
