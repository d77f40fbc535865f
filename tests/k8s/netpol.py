"""What a set of Kubernetes NetworkPolicy objects allows, decided the way the API documents it.

For the deploy kit's agent policies where no test cluster can enforce them (the tier-B node's
bridge CNI accepts NetworkPolicy objects and enforces nothing). Semantics, from the
networking.k8s.io/v1 reference:
- a pod is isolated for a direction once any policy in its namespace selects it and lists that
  direction in ``policyTypes``; a pod no policy isolates may do anything in that direction;
- an isolated pod's connection is allowed if any rule of any selecting policy allows it (policies
  are a union of allow-lists: there are no deny rules);
- a rule with an empty or no ``to``/``from`` matches every peer, without ``ports`` every port;
  a peer is an ``ipBlock`` (CIDR minus ``except``), a ``namespaceSelector``, a ``podSelector``
  (in the policy's namespace) or a namespace and pod selector together (both must match).
An ``ipBlock`` is matched against every address, pod addresses included: that only allows more
than a real plugin might, so a "denied" answer here holds everywhere.
Only ``matchLabels`` selectors and numeric ports are supported; anything else raises, so a kit
change this module cannot judge fails loudly instead of being misread.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Pod:
    """A pod as a peer: where it lives and what it is labelled."""

    namespace: str
    labels: Labels = field(default_factory=dict)
    namespace_labels: Labels = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: an address, and the pod behind it if it is one."""

    ip: str
    pod: Pod | None = None


class Unsupported(ValueError):
    """The policy uses a feature this evaluator does not model."""


def _selects(selector: Mapping[str, Any] | None, labels: Labels) -> bool:
    if selector is None:
        return False
    if set(selector) - {"matchLabels"}:
        raise Unsupported(f"selector {dict(selector)}: only matchLabels is modelled")
    wanted: Mapping[str, str] = selector.get("matchLabels") or {}
    return all(labels.get(key) == value for key, value in wanted.items())


def _in_block(block: Mapping[str, Any], ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(block["cidr"], strict=True)
    if address.version != network.version or address not in network:
        return False
    return not any(
        address in ipaddress.ip_network(cidr, strict=True) for cidr in block.get("except") or []
    )


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if set(peer) - {"ipBlock", "namespaceSelector", "podSelector"}:
        raise Unsupported(f"peer {dict(peer)}")
    if "ipBlock" in peer:
        return _in_block(peer["ipBlock"], other.ip)
    pod = other.pod
    if pod is None:
        return False
    namespace_ok = (
        _selects(peer["namespaceSelector"], pod.namespace_labels)
        if "namespaceSelector" in peer
        else pod.namespace == policy_namespace
    )
    pod_ok = _selects(peer["podSelector"], pod.labels) if "podSelector" in peer else True
    return namespace_ok and pod_ok


def _port_matches(ports: Iterable[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if "endPort" in entry or not isinstance(entry.get("port", 0), int):
            raise Unsupported(f"port {dict(entry)}: only single numeric ports are modelled")
        if entry.get("protocol", "TCP") == protocol and entry.get("port", port) == port:
            return True
    return False


def _selecting(policies: Iterable[Mapping[str, Any]], pod: Pod, direction: str) -> list[Any]:
    chosen = []
    for policy in policies:
        if policy["metadata"].get("namespace", "default") != pod.namespace:
            continue
        spec = policy["spec"]
        if not _selects(spec["podSelector"], pod.labels):
            continue
        types = spec.get("policyTypes") or (
            ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]
        )
        if direction in types:
            chosen.append(policy)
    return chosen


def allowed(
    policies: Iterable[Mapping[str, Any]],
    source: Pod,
    destination: Endpoint,
    port: int,
    protocol: str = "TCP",
    *,
    direction: str = "Egress",
) -> bool:
    """Whether ``source`` may open a connection to ``destination:port`` (``direction="Egress"``),
    or, with ``direction="Ingress"``, whether ``destination`` may connect to ``source``."""
    selecting = _selecting(list(policies), source, direction)
    if not selecting:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in selecting:
        namespace = policy["metadata"].get("namespace", "default")
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(peer, namespace, destination) for peer in peers):
                continue
            if _port_matches(rule.get("ports"), port, protocol):
                return True
    return False
