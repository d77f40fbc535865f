"""The deploy kit's agent NetworkPolicies, evaluated against a table of destinations.

No test cluster here enforces NetworkPolicy (the tier-B node's bridge CNI does not; see
tests/k8s/test_probe_node.py), so the policies' effect is decided by tests/k8s/netpol.py, which
follows the API's documented semantics; tests/k8s/test_manifests.py shows the real API server
accepts them unchanged. The cluster's ranges are K3s's defaults (pods 10.42.0.0/16, services
10.43.0.0/16), the nodes' network is the one deploy/hetzner/cluster.yaml creates, and the NFS
address is the one the kit pins. Addresses here are data only: nothing connects anywhere.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import netpol

KIT = Path(__file__).resolve().parents[2] / "deploy"
AGENTS = "agentfarm-agents"
POD_RANGE = "10.42.0.0/16"  # K3s default --cluster-cidr
SERVICE_RANGE = "10.43.0.0/16"  # K3s default --service-cidr
#: Never allowed, whatever the allow-list says: private, link-local (metadata), CGNAT (Tailscale),
#: loopback, and their IPv6 counterparts.
FORBIDDEN = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
             "127.0.0.0/8", "0.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128"]  # fmt: skip


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kit_objects() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for f in sorted((KIT / "k8s" / "base").glob("*.yaml")) for d in documents(f)]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.fixture(scope="module")
def policies() -> list[dict[str, Any]]:
    return [d for d in kit_objects().values() if d["kind"] == "NetworkPolicy"]


def nfs_address() -> str:
    return str(kit_objects()[("Service", "nfs-server")]["spec"]["clusterIP"])


def node_network() -> str:
    cluster = yaml.safe_load((KIT / "hetzner" / "cluster.yaml").read_text())
    return str(cluster["networking"]["private_network"]["subnet"])


def pod(namespace: str, **labels: str) -> netpol.Pod:
    return netpol.Pod(namespace, labels, {"kubernetes.io/metadata.name": namespace})


#: An agent pod as the kubernetes backend labels it, and the login pod of extras/.
AGENT_LABELS = {
    "app.kubernetes.io/managed-by": "agentfarm",
    "app.kubernetes.io/component": "agent",
    "agentfarm.dev/run-id": "r1",
}
AGENT = pod(AGENTS, **AGENT_LABELS)
LOGIN = pod(AGENTS, **{"app.kubernetes.io/name": "claude-login"})
DNS_POD = netpol.Endpoint("10.42.0.4", pod("kube-system", **{"k8s-app": "kube-dns"}))
CONTROL_PLANE_POD = netpol.Endpoint(
    "10.42.0.9", pod("agentfarm", **{"app.kubernetes.io/name": "agentfarm"})
)
NFS_POD = netpol.Endpoint(
    "10.42.0.7", pod("agentfarm-storage", **{"app.kubernetes.io/name": "nfs-server"})
)
OTHER_AGENT = netpol.Endpoint("10.42.1.23", AGENT)


def ip(address: str) -> netpol.Endpoint:
    return netpol.Endpoint(address)


DENIED: list[tuple[str, netpol.Endpoint, int, str]] = [
    ("cloud metadata", ip("169.254.169.254"), 80, "TCP"),
    ("cloud metadata, https", ip("169.254.169.254"), 443, "TCP"),
    ("another agent pod", OTHER_AGENT, 8080, "TCP"),
    ("any pod address", ip("10.42.3.3"), 443, "TCP"),
    ("the kubernetes Service (API server)", ip("10.43.0.1"), 443, "TCP"),
    ("any service address", ip("10.43.17.5"), 443, "TCP"),
    ("the control plane's pod", CONTROL_PLANE_POD, 8080, "TCP"),
    ("the control plane's pod, https", CONTROL_PLANE_POD, 443, "TCP"),
    ("the control plane's Service address", ip("10.43.120.80"), 80, "TCP"),
    ("the NFS Service", ip("NFS"), 2049, "TCP"),
    ("the NFS Service, rpcbind", ip("NFS"), 111, "UDP"),
    ("the NFS server pod", NFS_POD, 2049, "TCP"),
    ("a node's kubelet", ip("NODE"), 10250, "TCP"),
    ("a node's API server", ip("NODE"), 6443, "TCP"),
    ("a node over https", ip("NODE"), 443, "TCP"),
    ("the DNS pod off the DNS port", DNS_POD, 9153, "TCP"),
    ("a resolver outside the cluster", ip("1.1.1.1"), 53, "UDP"),
    ("the model API over plain http", ip("160.79.104.10"), 80, "TCP"),
    ("github over ssh", ip("140.82.112.3"), 22, "TCP"),
    ("a public host not on the list", ip("93.184.215.14"), 443, "TCP"),
    ("a private 172.16/12 address", ip("172.20.0.5"), 443, "TCP"),
    ("a private 192.168/16 address", ip("192.168.1.1"), 443, "TCP"),
    ("a CGNAT (Tailscale) address", ip("100.100.100.100"), 443, "TCP"),
    ("IPv6 link-local", ip("fe80::1"), 443, "TCP"),
]
ALLOWED: list[tuple[str, netpol.Endpoint, int, str]] = [
    ("cluster DNS over UDP", DNS_POD, 53, "UDP"),
    ("cluster DNS over TCP", DNS_POD, 53, "TCP"),
    ("api.anthropic.com", ip("160.79.104.10"), 443, "TCP"),
    ("github.com", ip("140.82.112.3"), 443, "TCP"),
]


def resolve(endpoint: netpol.Endpoint) -> netpol.Endpoint:
    if endpoint.ip == "NFS":
        return netpol.Endpoint(nfs_address())
    if endpoint.ip == "NODE":  # the first host of the nodes' private network
        return netpol.Endpoint(str(next(ipaddress.ip_network(node_network()).hosts()) + 1))
    return endpoint


@pytest.mark.parametrize("source", [AGENT, LOGIN], ids=["agent", "login"])
@pytest.mark.parametrize(
    ("what", "endpoint", "port", "protocol"), DENIED, ids=[d[0] for d in DENIED]
)
def test_agent_egress_is_denied(
    policies: list[dict[str, Any]],
    source: netpol.Pod,
    what: str,
    endpoint: netpol.Endpoint,
    port: int,
    protocol: str,
) -> None:
    assert not netpol.allowed(policies, source, resolve(endpoint), port, protocol), what


@pytest.mark.parametrize(
    ("what", "endpoint", "port", "protocol"), ALLOWED, ids=[a[0] for a in ALLOWED]
)
def test_agent_egress_is_allowed(
    policies: list[dict[str, Any]], what: str, endpoint: netpol.Endpoint, port: int, protocol: str
) -> None:
    assert netpol.allowed(policies, AGENT, endpoint, port, protocol), what


@pytest.mark.parametrize(
    "peer", [CONTROL_PLANE_POD, OTHER_AGENT, DNS_POD, ip("10.0.0.2"), ip("160.79.104.10")],
    ids=["control plane", "another agent", "dns", "a node", "outside"],
)  # fmt: skip
def test_nothing_connects_to_an_agent(
    policies: list[dict[str, Any]], peer: netpol.Endpoint
) -> None:
    assert not netpol.allowed(policies, AGENT, peer, 8080, direction="Ingress")


def test_the_table_covers_the_cluster_ranges() -> None:
    """The denied table really probes the ranges it names (a wrong constant would pass)."""
    ranges = [("pods", POD_RANGE), ("services", SERVICE_RANGE), ("nodes", node_network())]
    inside = {name: ipaddress.ip_network(cidr) for name, cidr in ranges}
    addresses = {ipaddress.ip_address(resolve(e).ip) for _, e, _, _ in DENIED}
    for name, network in inside.items():
        assert any(a in network for a in addresses), name
    assert ipaddress.ip_address(nfs_address()) in inside["services"]


def test_policies_cover_the_namespace_the_control_plane_launches_into(
    policies: list[dict[str, Any]],
) -> None:
    deployment = kit_objects()[("Deployment", "agentfarm")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AGENTFARM_K8S_NAMESPACE"] == AGENTS
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("egress")]
    assert deny, "a default-deny policy selecting every pod"
    assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert deny[0]["metadata"]["namespace"] == AGENTS


def test_no_allowed_cidr_reaches_a_forbidden_range(policies: list[dict[str, Any]]) -> None:
    """Whatever an operator adds to the allow-list: a CIDR overlapping a private, link-local,
    CGNAT or loopback range must carve it out with ``except``."""
    blocks = [
        peer["ipBlock"]
        for policy in policies
        for rule in policy["spec"].get("egress") or []
        for peer in rule.get("to") or []
        if "ipBlock" in peer
    ]
    assert blocks
    for block in blocks:
        network = ipaddress.ip_network(block["cidr"])
        excepted = [ipaddress.ip_network(c) for c in block.get("except") or []]
        for forbidden in map(ipaddress.ip_network, FORBIDDEN):
            if forbidden.version != network.version or not network.overlaps(forbidden):
                continue
            assert any(
                forbidden.subnet_of(e) or network.subnet_of(e)
                for e in excepted
                if e.version == forbidden.version
            ), f"{block['cidr']} reaches {forbidden}: add it to `except`"


def test_every_allow_rule_names_its_ports(policies: list[dict[str, Any]]) -> None:
    """An egress rule without ports would open every port of its peers (ssh, raw TCP)."""
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            assert rule.get("ports"), policy["metadata"]["name"]


def test_the_evaluator_sees_an_open_policy_as_open(policies: list[dict[str, Any]]) -> None:
    """Guard against an evaluator that denies everything: without the kit's policies, or with
    an allow-all rule added, the metadata address would be reachable."""
    metadata = ip("169.254.169.254")
    assert netpol.allowed([], AGENT, metadata, 80)
    allow_all = {
        "metadata": {"name": "open", "namespace": AGENTS},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
    }
    assert netpol.allowed([*policies, allow_all], AGENT, metadata, 80)
    with_except = {
        "metadata": {"name": "broad", "namespace": AGENTS},
        "spec": {"podSelector": {}, "egress": [{"to": [{"ipBlock": {
            "cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}]}], "policyTypes": ["Egress"]},
    }  # fmt: skip
    assert not netpol.allowed([*policies, with_except], AGENT, metadata, 80)
    assert netpol.allowed([*policies, with_except], AGENT, ip("93.184.215.14"), 22)


def test_unsupported_policy_features_fail_loudly() -> None:
    policy = {
        "metadata": {"name": "x", "namespace": AGENTS},
        "spec": {"podSelector": {"matchExpressions": []}, "policyTypes": ["Egress"]},
    }
    with pytest.raises(netpol.Unsupported):
        netpol.allowed([policy], AGENT, ip("160.79.104.10"), 443)
