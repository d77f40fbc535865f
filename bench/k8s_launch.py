"""Kubernetes backend launch, on the tier-B test node, interleaved run by run:

(a) POST /api/runs (backend `kubernetes`) -> the agent pod created, Running, and the first agent
    event on the SSE stream;
(b) `kubectl create` of a bare pod (same image, same RuntimeClass, `sleep`) -> Running;
(c) the same bare pod with an init container (`sleep 0`) first, as agent pods have (the clone).

Needs root and the test cluster's binaries (scripts/k8s-testenv/build.sh):

    .venv/bin/python bench/k8s_launch.py [--runs 5]
"""

from __future__ import annotations

import argparse
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
from common import Server, median

from agentfarm.backends.kubernetes import manifests
from tests.fakes import anthropic_api
from tests.k8s import cluster
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
    world.node.kubectl("-n", world.namespace, "delete", "pod", name)
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
    world.node.kubectl("-n", world.namespace, "delete", "pod", name, "--grace-period=1")
    return running, created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the tier-B test node needs root")
    if missing := cluster.missing_binaries():
        raise SystemExit(f"run scripts/k8s-testenv/build.sh first; missing: {', '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix="bench-k8s-"))
    figures: dict[str, list[float]] = {
        key: []
        for key in ("farm_created", "farm_running", "farm_event", "bare", "bare_kubectl", "init")
    }
    try:
        with (
            cluster.running("node", work / "node") as node,
            agent_world(node, Path(tempfile.mkdtemp(dir=work)), "bench") as world,
            PodWatch(node, world.namespace) as watch,
        ):
            world.fake.register(SLOW_HELLO, [anthropic_api.text("Hello!", delay=3.0)])
            srv = Server(work / "data", world.server_env(), work / "server.log")
            try:
                srv.start()
                with srv.client() as client:
                    via_agentfarm(srv, client, world, watch)  # warm-up every path
                    bare_pod(world, watch, 0)
                    bare_pod(world, watch, 0, init=True)
                    paths = ["farm", "bare", "init"]
                    for i in range(1, args.runs + 1):
                        for path in paths[i % 3 :] + paths[: i % 3]:
                            if path == "farm":
                                created, running, event = via_agentfarm(srv, client, world, watch)
                                figures["farm_created"].append(created)
                                figures["farm_running"].append(running)
                                figures["farm_event"].append(event)
                            elif path == "bare":
                                running, kubectl = bare_pod(world, watch, i)
                                figures["bare"].append(running)
                                figures["bare_kubectl"].append(kubectl)
                            else:
                                running, _ = bare_pod(world, watch, i, init=True)
                                figures["init"].append(running)
            finally:
                srv.stop()
            load = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ms(values: list[float]) -> str:
        return (
            f"median {median(values) * 1000:7.0f} ms  (all: "
            + ", ".join(f"{v * 1000:.0f}" for v in values)
            + ")"
        )

    bare = median(figures["bare"])
    print(f"runs: {args.runs} each, interleaved; cores: {os.cpu_count()}; load average {load:.1f}")
    print(f"(b) bare pod, kubectl create -> Running:           {ms(figures['bare'])}")
    print(f"    of which kubectl create returns:               {ms(figures['bare_kubectl'])}")
    print(f"(c) bare pod + init container -> Running:          {ms(figures['init'])}")
    print(f"(a) agentfarm, POST /api/runs -> pod created:      {ms(figures['farm_created'])}")
    print(f"(a) agentfarm, POST /api/runs -> pod Running:      {ms(figures['farm_running'])}")
    print(f"(a) agentfarm, POST /api/runs -> first agent event: {ms(figures['farm_event'])}")
    print(
        f"ratios to (b): pod Running {median(figures['farm_running']) / bare:.2f}x, "
        f"first agent event {median(figures['farm_event']) / bare:.2f}x; "
        f"(c) {median(figures['init']) / bare:.2f}x"
    )


if __name__ == "__main__":
    main()
