"""The sandbox probe suite on the Kubernetes backend, on the tier-B node: a real agent pod (the
agent image, the pod spec the backend builds) tries what a hostile agent would.

Everything runs inside the node's own network namespace, which the test cluster creates: the
control plane is the control-plane image running as the kit's pod, the node is 10.200.0.1, and
nothing is sent anywhere else (never to 169.254.169.254: tests/unit/test_kit_network_policy.py
shows the kit's policy denies it).

This node's network plugin is the plain CNI bridge, which accepts NetworkPolicy objects and
enforces none. The kit's agent policies are applied to the agents' namespace anyway, and the
probe shows what that means: the control plane's pod and the node's ports stay reachable here
(``NOT_ENFORCED``; the policy's effect is shown by the unit test and needs an enforcing plugin
such as K3s's). What holds without any policy is asserted as holding (``HOLDS``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agentfarm.backends.kubernetes import backend as k8s_backend
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests.k8s import agentimage, cluster, controlplaneimage
from tests.k8s.test_manifests import KIT, resolve, url

#: Runs in the agent container as ``python3 -c``; prints one JSON line of findings.
PROBE = r"""
import json, os, socket, ssl, sys, urllib.error, urllib.request

class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None

def tcp(host, port):
    try:
        with socket.create_connection((host, port), timeout=5):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as error:
        return f"error: {error}"

def http(url, headers):
    opener = urllib.request.build_opener(
        NoRedirect, urllib.request.HTTPSHandler(context=ssl._create_unverified_context()),
        urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:
        return f"error: {error}"

def write(path):
    try:
        with open(path, "w") as handle:
            handle.write("probe")
        return "written"
    except OSError as error:
        return f"error: {error.strerror}"

targets = json.loads(sys.argv[1])
found = {}
for name, (kind, *args) in targets.items():
    if kind == "tcp":
        found[name] = tcp(*args)
    elif kind == "http":
        found[name] = http(*args)
    elif kind == "write":
        found[name] = write(*args)
    elif kind == "exists":
        found[name] = os.path.exists(args[0])
print(json.dumps({"probe": found}), flush=True)
"""


def targets(
    control_plane: str, world: agentimage.AgentWorld, neighbour: str = "10.244.0.250"
) -> dict[str, list[Any]]:
    node = cluster.NODE_IP
    plane = f"http://{control_plane}:8080"
    return {
        # what the run needs: the model endpoint and the git host (relayed to the node IP)
        "model endpoint": ["tcp", node, world.fake.port],
        "git host": ["tcp", node, world.git_port],
        # the control plane, plainly and with a forged forward-auth header
        "control plane port": ["tcp", control_plane, 8080],
        "control plane API without token": ["http", f"{plane}/api/runs", {}],
        "control plane with forged Remote-User": [
            "http", f"{plane}/settings", {"Remote-User": "admin", "X-Forwarded-User": "admin"}],
        # a port another pod of the agents' namespace (another run) listens on
        "another run's listener": ["tcp", neighbour, 8081],
        # the node's other ports
        "node API server port": ["tcp", node, 6443],
        "node API server, anonymous secrets": [
            "http", f"https://{node}:6443/api/v1/namespaces/{world.namespace}/secrets", {}],
        "node kubelet port": ["tcp", node, 10250],
        "node etcd (node loopback only)": ["tcp", node, 2379],
        "etcd on the pod's own loopback": ["tcp", "127.0.0.1", 2379],
        # files
        "service account token": ["exists", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
        "control plane data directory": ["exists", "/data/agentfarm"],
        "write to the image (/etc)": ["write", "/etc/probe"],
        "write to /usr/local/bin": ["write", "/usr/local/bin/probe"],
        "write to the workspace": ["write", "/workspace/probe.txt"],
    }  # fmt: skip


#: Holds on this node without any NetworkPolicy engine.
HOLDS = {
    "control plane API without token": lambda r: r == 401,
    "control plane with forged Remote-User": lambda r: r != 200 and not str(r).startswith("error"),
    "node API server, anonymous secrets": lambda r: r in (401, 403),
    "node etcd (node loopback only)": lambda r: r == "refused",
    "etcd on the pod's own loopback": lambda r: r == "refused",
    "service account token": lambda r: r is False,
    "control plane data directory": lambda r: r is False,
    "write to the image (/etc)": lambda r: r == "error: Read-only file system",
    "write to /usr/local/bin": lambda r: r == "error: Read-only file system",
}
#: What the run needs, reachable.
NEEDED = {"model endpoint": "open", "git host": "open", "write to the workspace": "written"}
#: Denied by the kit's policies on an enforcing plugin; reachable on this node's bridge CNI.
NOT_ENFORCED = [
    "control plane port",
    "another run's listener",
    "node API server port",
    "node kubelet port",
]


@pytest.fixture(scope="module")
def world(
    k8s_node: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[agentimage.AgentWorld]:
    work = tmp_path_factory.mktemp("k8s-probe")
    with agentimage.agent_world(k8s_node, work, "probe-test") as agents:
        yield agents


@pytest.fixture(scope="module")
def control_plane(
    k8s_node: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[controlplaneimage.ControlPlane]:
    with controlplaneimage.control_plane(k8s_node, tmp_path_factory.mktemp("cp")) as plane:
        yield plane


@pytest.fixture
async def backend(world: agentimage.AgentWorld) -> AsyncIterator[k8s_backend.KubernetesBackend]:
    settings = Settings(
        k8s_kubeconfig=world.node.kubeconfig,
        k8s_namespace=world.namespace,
        k8s_image=agentimage.IMAGE,
        k8s_runtime_class=world.node.runtime_class,
        k8s_instance=world.instance,
        k8s_cleanup_after_seconds=0,
        stop_grace_seconds=3,
    )
    b = k8s_backend.KubernetesBackend(settings)
    yield b
    await b.aclose()


def start_neighbour(node: cluster.Cluster, namespace: str) -> str:
    """A pod in the agents' namespace serving HTTP on 8081 (busybox httpd); returns its IP."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "neighbour", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "httpd", "image": node.busybox_image,
                            "command": ["httpd", "-f", "-p", "8081", "-h", "/tmp"]}],
        },
    }  # fmt: skip
    status, body = node.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert status == 201, body
    for _ in range(240):
        status, body = node.request("GET", f"/api/v1/namespaces/{namespace}/pods/neighbour")
        if body.get("status", {}).get("phase") == "Running" and body["status"].get("podIP"):
            return str(body["status"]["podIP"])
        time.sleep(0.5)
    raise AssertionError(f"the neighbour pod never ran: {body.get('status')}")


def apply_agent_policies(node: cluster.Cluster, namespace: str) -> int:
    """The kit's NetworkPolicies, created in the test's agents namespace."""
    count = 0
    for _, doc in resolve(KIT):
        if doc["kind"] != "NetworkPolicy":
            continue
        policy = json.loads(json.dumps(doc))
        policy["metadata"]["namespace"] = namespace
        status, body = node.request("POST", url(policy, collection=True), policy)
        assert status == 201, body
        count += 1
    return count


async def run_probe(
    backend: k8s_backend.KubernetesBackend, world: agentimage.AgentWorld, probes: dict[str, Any]
) -> dict[str, Any]:
    spec = models.AgentSpec(
        repo=world.repo_url, base_branch="main", prompt="probe", backend="kubernetes"
    )
    run = models.Run(spec=spec)
    command = AgentCommand(argv=["python3", "-c", PROBE, json.dumps(probes)], env={})
    launch_spec = LaunchSpec.of(run.id, command, {"ANTHROPIC_API_KEY": agentimage.API_KEY})
    handle, _ = await backend.launch(run, launch_spec)
    lines: list[str] = []
    async with asyncio.timeout(180):
        async for record in handle.records(after=0):
            if record.kind in ("stdout", "stderr", "notice"):
                lines.append(record.data.decode(errors="replace"))
            if record.kind == "exit":
                break
    await backend.cleanup(run)
    for line in lines:
        if '{"probe"' in line:  # whatever framing the entrypoint puts around a line
            decoded, _ = json.JSONDecoder().raw_decode(line[line.index('{"probe"') :])
            found: dict[str, Any] = decoded["probe"]
            return found
    raise AssertionError("the probe printed no findings:\n" + "\n".join(lines))


async def test_an_agent_pod_reaches_only_what_holds_without_a_policy_engine(
    k8s_node: cluster.Cluster,
    world: agentimage.AgentWorld,
    control_plane: controlplaneimage.ControlPlane,
    backend: k8s_backend.KubernetesBackend,
) -> None:
    assert await asyncio.to_thread(apply_agent_policies, k8s_node, world.namespace) >= 3
    neighbour = await asyncio.to_thread(start_neighbour, k8s_node, world.namespace)
    found = await run_probe(backend, world, targets(control_plane.address, world, neighbour))
    print(json.dumps(found, indent=1))
    for name, check in HOLDS.items():
        assert check(found[name]), f"{name}: {found[name]}"
    for name, want in NEEDED.items():
        assert found[name] == want, f"{name}: {found[name]}"
    # The bridge CNI enforces no NetworkPolicy: if this fails, the node has gained a policy
    # engine; then assert these are denied and update docs/deploy.md ("Agent network").
    for name in NOT_ENFORCED:
        assert found[name] == "open", f"{name}: {found[name]}"


def test_the_probe_covers_every_target() -> None:
    fake_world: Any = type("W", (), {"fake": type("F", (), {"port": 1})(), "git_port": 2,
                                      "namespace": "n"})()  # fmt: skip
    names = set(targets("10.244.0.9", fake_world))
    assert names == set(HOLDS) | set(NEEDED) | set(NOT_ENFORCED)
    assert not any("169.254" in json.dumps(t) for t in targets("10.244.0.9", fake_world).values())
