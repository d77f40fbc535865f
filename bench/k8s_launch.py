"""Kubernetes backend launch, on the tier-B test node, interleaved run by run:

(a) POST /api/runs (backend `kubernetes`) -> the agent pod created, Running, and the first agent
    event on the SSE stream (the pod clones in its agent container);
(a0) with ``--baseline CHECKOUT``: the same through another checkout's server (its
    ``.venv/bin/agentfarm``, e.g. one whose pods clone in an init container), side by side;
(b) `kubectl create` of a bare pod (same image, same RuntimeClass, `sleep`) -> Running;
(c) the same bare pod with an init container (`sleep 0`) first, the shape of a pod that clones
    in an init container;
(d) a warm pod (the agent image, created ahead and Running): an exec of the entrypoint through
    the API server -> its reply, what claiming a pod of a warm pool costs at least.

Needs root, the test cluster's binaries (scripts/k8s-testenv/build.sh puts them in
$AGENTFARM_K8S_CACHE, by default ~/.cache/agentfarm/k8s) and the Claude Code and Codex CLIs
the agent image is assembled from ($AGENTFARM_TOOLS, by default .tools; `make claude codex`):

    .venv/bin/python bench/k8s_launch.py [--runs 5] [--baseline CHECKOUT]

A run's pod is deleted by the server as the run ends (AGENTFARM_K8S_CLEANUP_AFTER_SECONDS=0);
each measurement waits until its pod is gone before the next one starts.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from common import Server, median

from agentfarm.backends.kubernetes import manifests
from tests.fakes import anthropic_api
from tests.k8s import cluster, test_backend_node
from tests.k8s import node as node_tools
from tests.k8s.agentimage import IMAGE, AgentWorld, agent_world


#: The model answers after a pause: a pod whose agent is done within the kubelet's status
#: period (about 1 s here) goes from Pending straight to Succeeded and is never seen Running.
#: The CLI prints its first event (init) before it asks the model, so this does not delay it.
SLOW_HELLO = "bench-slow-hello"
PROMPT = f"[scenario:{SLOW_HELLO}]"


class PodWatch:
    """Watches a namespace's pods and notes when each is first seen, and first seen Running
    (perf_counter)."""

    def __init__(self, node: cluster.Cluster, namespace: str) -> None:
        self.node = node
        self.namespace = namespace
        self.created: dict[str, float] = {}  # first seen
        self.running: dict[str, float] = {}
        self.deleted: set[str] = set()
        self._cond = threading.Condition()
        self._conn: http.client.HTTPSConnection | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="pod-watch", daemon=True)

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._closed = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        host, _, port = self.node.server.removeprefix("https://").partition(":")
        context = ssl.create_default_context(cafile=str(self.node.ca_file))
        path = f"/api/v1/namespaces/{self.namespace}/pods?watch=1&timeoutSeconds=600"
        headers = {"Authorization": f"Bearer {self.node.admin_token}"}
        while not self._closed:
            conn = http.client.HTTPSConnection(host, int(port), context=context)
            self._conn = conn
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                while line := response.readline():
                    self._note(json.loads(line))
            except (OSError, http.client.HTTPException, ValueError):
                if not self._closed:
                    time.sleep(0.1)
            finally:
                conn.close()

    def _note(self, event: dict[str, Any]) -> None:
        pod = event.get("object") or {}
        name = (pod.get("metadata") or {}).get("name")
        if not name:
            return
        now = time.perf_counter()
        with self._cond:
            if event.get("type") == "DELETED":
                self.deleted.add(name)
            self.created.setdefault(name, now)
            if (pod.get("status") or {}).get("phase") == "Running":
                self.running.setdefault(name, now)
            self._cond.notify_all()

    def wait_running(self, name: str, timeout: float = 120) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: name in self.running, timeout=timeout):
                raise RuntimeError(f"pod {name} not Running after {timeout} s")
            return self.running[name]

    def created_at(self, name: str) -> float:
        with self._cond:
            return self.created[name]

    def wait_gone(self, name: str, timeout: float = 120) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: name in self.deleted, timeout=timeout):
                raise RuntimeError(f"pod {name} not deleted after {timeout} s")


def delete_pod(world: AgentWorld, watch: PodWatch, name: str) -> None:
    """Delete a pod unless it is gone already (a server whose AGENTFARM_K8S_CLEANUP_AFTER_SECONDS
    is 0 deletes its run's pod as the run ends), and wait until it is: the next measurement
    must not share the node with a pod being torn down."""
    world.node.kubectl(
        "-n", world.namespace, "delete", "pod", name, "--grace-period=1", "--ignore-not-found",
        "--wait=false",
    )  # fmt: skip
    watch.wait_gone(name)


def via_agentfarm(
    srv: Server, client: httpx.Client, world: AgentWorld, watch: PodWatch
) -> tuple[float, float, float]:
    """Seconds from POST /api/runs to the pod created, to the pod Running and to the first
    agent.* event on the SSE stream."""
    started = time.perf_counter()
    response = client.post("/api/runs", json={"spec": world.spec(f"{PROMPT} say hello")})
    response.raise_for_status()
    run_id = response.json()["id"]
    first_event: float | None = None
    with client.stream(
        "GET", f"/api/runs/{run_id}/events", headers={"Accept": "text/event-stream"}
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["type"].startswith("agent."):
                first_event = time.perf_counter() - started
                break
    if first_event is None:
        raise RuntimeError(f"run {run_id} produced no agent event")
    name = manifests.object_name(run_id)
    running = watch.wait_running(name) - started
    created = watch.created_at(name) - started
    done = srv.wait_status(run_id, {"succeeded", "failed", "stopped", "lost"}, timeout=120)
    if done["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} ended {done['status']}: {done.get('error')}")
    delete_pod(world, watch, name)
    return created, running, first_event


def bare_pod(
    world: AgentWorld, watch: PodWatch, index: int, *, init: bool = False
) -> tuple[float, float]:
    """Seconds from `kubectl create` to the pod Running, and for kubectl to return. With
    ``init``, the pod first runs an init container (`sleep 0`), as agent pods do (the clone)."""
    name = f"bare{'-init' if init else ''}-{index}-{os.getpid()}"
    container = {
        "name": "main",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", "3600"],
    }
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": world.namespace},
        "spec": {
            "restartPolicy": "Never",
            "runtimeClassName": world.node.runtime_class,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }
    if init:
        pod["spec"]["initContainers"] = [{**container, "name": "init", "command": ["sleep", "0"]}]
    started = time.perf_counter()
    world.node.kubectl("create", "-f", "-", input=json.dumps(pod))
    created = time.perf_counter() - started
    running = watch.wait_running(name) - started
    delete_pod(world, watch, name)
    return running, created


def warm_pod(world: AgentWorld, watch: PodWatch) -> str:
    """A pod of the agent image, created ahead and Running, as a warm pool would keep."""
    name = f"warm-{os.getpid()}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": world.namespace},
        "spec": {
            "restartPolicy": "Never",
            "runtimeClassName": world.node.runtime_class,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                 "command": ["sleep", "3600"]}
            ],
        },
    }  # fmt: skip
    world.node.kubectl("create", "-f", "-", input=json.dumps(pod))
    watch.wait_running(name)
    return name


def claim_warm(world: AgentWorld, name: str) -> float:
    """Seconds from an exec into the warm pod (through the API server and the kubelet) of
    ``entrypoint.py control``, as the control plane reaches a pod's entrypoint and would hand
    a claimed pod its run, to its reply (no run listens yet: it says so)."""
    host, _, port = world.node.server.removeprefix("https://").partition(":")
    context = ssl.create_default_context(cafile=str(world.node.ca_file))
    path = (
        f"/api/v1/namespaces/{world.namespace}/pods/{name}/exec"
        f"?container=main&stdout=true&command=python3&command={manifests.ENTRYPOINT}"
        "&command=control"
    )
    started = time.perf_counter()
    with socket.create_connection((host, int(port))) as raw:
        sock = context.wrap_socket(raw, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n"
            f"Authorization: Bearer {world.node.admin_token}\r\n\r\n".encode()
        )
        seen = b""
        while b'"ok"' not in seen:  # the handshake, then frames on channel 1 (stdout)
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"the exec into {name} ended without output: {seen[:300]!r}")
            seen += chunk
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (with its .venv) whose server is measured side by side as (a0)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the tier-B test node needs root: run this as root")
    if missing := cluster.missing_binaries():
        raise SystemExit(
            f"the test cluster's binaries are missing ({', '.join(missing)}): run "
            "scripts/k8s-testenv/build.sh, or set AGENTFARM_TOOLS to a directory that has them"
        )
    if missing := node_tools.missing_tools():
        raise SystemExit(f"the test node needs {', '.join(missing)}: see scripts/k8s-testenv")
    try:  # the agent image is assembled from them
        test_backend_node.claude_binary()
        test_backend_node.codex_binary()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        raise SystemExit(f"{exc.msg} (or set AGENTFARM_TOOLS to a directory that has it)") from None
    baseline: Path | None = None
    if args.baseline is not None:
        baseline = args.baseline.resolve() / ".venv" / "bin" / "agentfarm"
        if not baseline.is_file():
            raise SystemExit(f"no {baseline}: give a checkout with its .venv (make install-dev)")
    work = Path(tempfile.mkdtemp(prefix="bench-k8s-"))
    keys = ("farm_created", "farm_running", "farm_event", "bare", "bare_kubectl", "init", "warm")
    figures: dict[str, list[float]] = {key: [] for key in keys}
    figures |= {"base_created": [], "base_running": [], "base_event": []}
    loads: list[float] = []
    try:
        with (
            cluster.running("node", work / "node") as node,
            agent_world(node, Path(tempfile.mkdtemp(dir=work)), "bench") as world,
            PodWatch(node, world.namespace) as watch,
            contextlib.ExitStack() as servers,
        ):
            world.fake.register(SLOW_HELLO, [anthropic_api.text("Hello!", delay=3.0)])
            srv = Server(work / "data", world.server_env(), work / "server.log")
            servers.callback(srv.stop)
            srv.start()
            farms = {"farm": srv}
            if baseline is not None:
                env = world.server_env() | {"AGENTFARM_K8S_INSTANCE": "bench-baseline"}
                base = Server(work / "data-baseline", env, work / "server-baseline.log")
                base.program = baseline
                servers.callback(base.stop)
                farms["base"] = base.start()
            clients = {key: servers.enter_context(s.client()) for key, s in farms.items()}
            for key, server in farms.items():  # warm-up every path
                via_agentfarm(server, clients[key], world, watch)
            bare_pod(world, watch, 0)
            bare_pod(world, watch, 0, init=True)
            warm = warm_pod(world, watch)
            claim_warm(world, warm)
            paths = [*farms, "bare", "init", "warm"]
            for i in range(1, args.runs + 1):
                loads.append(os.getloadavg()[0])
                for path in paths[i % len(paths) :] + paths[: i % len(paths)]:
                    if path in farms:
                        got = via_agentfarm(farms[path], clients[path], world, watch)
                        for what, value in zip(("created", "running", "event"), got, strict=True):
                            figures[f"{path}_{what}"].append(value)
                    elif path == "bare":
                        running, kubectl = bare_pod(world, watch, i)
                        figures["bare"].append(running)
                        figures["bare_kubectl"].append(kubectl)
                    elif path == "init":
                        running, _ = bare_pod(world, watch, i, init=True)
                        figures["init"].append(running)
                    else:
                        figures["warm"].append(claim_warm(world, warm))
            loads.append(os.getloadavg()[0])
            delete_pod(world, watch, warm)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ms(values: list[float]) -> str:
        return (
            f"median {median(values) * 1000:7.0f} ms  (all: "
            + ", ".join(f"{v * 1000:.0f}" for v in values)
            + ")"
        )

    bare = median(figures["bare"])
    print(
        f"runs: {args.runs} each, interleaved; cores: {os.cpu_count()}; load average (1 min) "
        f"during the runs: {min(loads):.1f}-{max(loads):.1f}, median {median(loads):.1f}"
    )
    print(f"(b)  bare pod, kubectl create -> Running:            {ms(figures['bare'])}")
    print(f"     of which kubectl create returns:                {ms(figures['bare_kubectl'])}")
    print(f"(c)  bare pod + init container -> Running:           {ms(figures['init'])}")
    print(f"(d)  warm pod, exec of the entrypoint -> its reply:  {ms(figures['warm'])}")
    rows = [("a", "farm", "this checkout")]
    if baseline is not None:
        rows.append(("a0", "base", str(args.baseline)))
    for label, key, what in rows:
        print(f"({label}) {what}:")
        print(
            f"     POST /api/runs -> pod created:                  {ms(figures[key + '_created'])}"
        )
        print(
            f"     POST /api/runs -> pod Running:                  {ms(figures[key + '_running'])}"
        )
        print(f"     POST /api/runs -> first agent event:            {ms(figures[key + '_event'])}")
        print(
            f"     ratios to (b): pod Running {median(figures[key + '_running']) / bare:.2f}x, "
            f"first agent event {median(figures[key + '_event']) / bare:.2f}x"
        )
    init, warm = median(figures["init"]) / bare, median(figures["warm"]) / bare
    print(f"(c)/(b) {init:.2f}x; (d)/(b) {warm:.2f}x")


if __name__ == "__main__":
    main()
