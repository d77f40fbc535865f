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
import collections
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
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from common import Server, median

from agentfarm.backends.kubernetes import manifests
from tests.fakes import anthropic_api
from tests.k8s import cluster, test_backend_node
from tests.k8s import node as node_tools
from tests.k8s.agentimage import API_KEY, IMAGE, AgentWorld, agent_world


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


def pod_timeline(world: AgentWorld, name: str, posted: float) -> dict[str, float]:
    """Seconds from ``posted`` (wall clock) to what the pod's logs say, by the kubelet's
    timestamps (the node shares this machine's clock): ``entrypoint``, its first line;
    ``cloned``, the clone done (the agent container's notice, or the init container's line);
    ``cli``, the agent's first stdout line."""
    found: dict[str, float] = {}
    for container in ("clone", "agent"):
        out = world.node.kubectl(
            "-n", world.namespace, "logs", "--timestamps", name, "-c", container, check=False
        )  # fmt: skip
        for line in out.split("\n"):  # not splitlines(): \x1e starts the entrypoint's lines
            stamp, _, text = line.partition(" ")
            if not text:
                continue
            at = datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp() - posted
            if container == "agent":
                found.setdefault("entrypoint", at)
            if "cloned " in text:
                found.setdefault("cloned", at)
            if text.startswith("\x1eO") or (container == "agent" and not text.startswith("\x1e")):
                found.setdefault("cli", at)
    return found


def via_agentfarm(
    srv: Server, client: httpx.Client, world: AgentWorld, watch: PodWatch
) -> tuple[float, float, float, dict[str, float]]:
    """Seconds from POST /api/runs to the pod created, to the pod Running and to the first
    agent.* event on the SSE stream; and the pod's own timeline (:func:`pod_timeline`)."""
    posted = time.time()
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
    timeline = pod_timeline(world, name, posted)
    delete_pod(world, watch, name)
    return created, running, first_event, timeline


def bare_pod(
    world: AgentWorld, watch: PodWatch, index: int, *, init: bool = False
) -> tuple[float, float]:
    """Seconds from `kubectl create` to the pod Running, and for kubectl to return. With
    ``init``, the pod first runs an init container (`sleep 0`), the shape of an agent pod that
    clones in an init container."""
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


def bare_cli_pod(world: AgentWorld, watch: PodWatch, index: int) -> tuple[float, float]:
    """A bare pod (same image and RuntimeClass, writable HOME and /tmp) that runs the agent CLI
    itself on the same prompt, no clone, no agentfarm: seconds from `kubectl create` to
    Running, and to its first stdout line read through the API server (followed from when it
    is seen Running, as agentfarm does)."""
    name = f"bare-cli-{index}-{os.getpid()}"
    env = {
        "HOME": "/home/agent",
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": world.model_url,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    argv = ["claude", "-p", f"{PROMPT} say hello", "--output-format", "stream-json", "--verbose"]
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
                 "command": argv, "workingDir": "/tmp",
                 "env": [{"name": k, "value": v} for k, v in env.items()],
                 "volumeMounts": [{"name": "home", "mountPath": "/home/agent"},
                                  {"name": "tmp", "mountPath": "/tmp"}]}
            ],
            "volumes": [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        },
    }  # fmt: skip
    started = time.perf_counter()
    world.node.kubectl("create", "-f", "-", input=json.dumps(pod))
    running = watch.wait_running(name) - started
    host, _, port = world.node.server.removeprefix("https://").partition(":")
    context = ssl.create_default_context(cafile=str(world.node.ca_file))
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
    try:
        path = f"/api/v1/namespaces/{world.namespace}/pods/{name}/log?container=main&follow=true"
        conn.request("GET", path, headers={"Authorization": f"Bearer {world.node.admin_token}"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"log of {name}: {response.status} {response.read()[:300]!r}")
        if not response.readline():
            raise RuntimeError(f"pod {name} printed nothing")
        first_line = time.perf_counter() - started
    finally:
        conn.close()
    delete_pod(world, watch, name)
    return running, first_line


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
    figures: dict[str, list[float]] = collections.defaultdict(list)
    loads: list[float] = []
    try:
        with (
            cluster.running("node", work / "node") as node,
            agent_world(node, Path(tempfile.mkdtemp(dir=work)), "bench") as world,
            PodWatch(node, world.namespace) as watch,
            contextlib.ExitStack() as servers,
        ):
            world.fake.register(SLOW_HELLO, [anthropic_api.text("Hello!", delay=3.0)])
            # The pods stay after their runs (the bench reads their logs' timestamps first).
            env = world.server_env() | {"AGENTFARM_K8S_CLEANUP_AFTER_SECONDS": "3600"}
            srv = Server(work / "data", env, work / "server.log")
            servers.callback(srv.stop)
            srv.start()
            farms = {"farm": srv}
            if baseline is not None:
                env |= {"AGENTFARM_K8S_INSTANCE": "bench-baseline"}
                base = Server(work / "data-baseline", env, work / "server-baseline.log")
                base.program = baseline
                servers.callback(base.stop)
                farms["base"] = base.start()
            clients = {key: servers.enter_context(s.client()) for key, s in farms.items()}
            for key, server in farms.items():  # warm-up every path
                via_agentfarm(server, clients[key], world, watch)
            bare_pod(world, watch, 0)
            bare_pod(world, watch, 0, init=True)
            bare_cli_pod(world, watch, 0)
            warm = warm_pod(world, watch)
            claim_warm(world, warm)
            paths = [*farms, "bare", "init", "cli", "warm"]
            for i in range(1, args.runs + 1):
                loads.append(os.getloadavg()[0])
                for path in paths[i % len(paths) :] + paths[: i % len(paths)]:
                    if path in farms:
                        *got, timeline = via_agentfarm(farms[path], clients[path], world, watch)
                        for what, value in zip(("created", "running", "event"), got, strict=True):
                            figures[f"{path}_{what}"].append(value)
                        for what, value in timeline.items():
                            figures[f"{path}_pod_{what}"].append(value)
                    elif path == "bare":
                        running, kubectl = bare_pod(world, watch, i)
                        figures["bare"].append(running)
                        figures["bare_kubectl"].append(kubectl)
                    elif path == "init":
                        running, _ = bare_pod(world, watch, i, init=True)
                        figures["init"].append(running)
                    elif path == "cli":
                        running, first = bare_cli_pod(world, watch, i)
                        figures["cli_running"].append(running)
                        figures["cli_first"].append(first)
                    else:
                        figures["warm"].append(claim_warm(world, warm))
            loads.append(os.getloadavg()[0])
            delete_pod(world, watch, warm)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ms(key: str) -> str:
        values = figures[key]
        return (
            f"median {median(values) * 1000:6.0f} ms  (all: "
            + ", ".join(f"{v * 1000:.0f}" for v in values)
            + ")"
        )

    bare, cli = median(figures["bare"]), median(figures["cli_first"])
    print(
        f"runs: {args.runs} each, interleaved; cores: {os.cpu_count()}; load average (1 min) "
        f"during the runs: {min(loads):.1f}-{max(loads):.1f}, median {median(loads):.1f}"
    )
    print(f"(b)  bare pod (sleep), kubectl create -> Running:       {ms('bare')}")
    print(f"       of which kubectl create returns:                {ms('bare_kubectl')}")
    print(f"(b') bare pod running the CLI, create -> Running:      {ms('cli_running')}")
    print(f"       create -> its first line (log followed):        {ms('cli_first')}")
    print(f"(c)  bare pod + init container -> Running:             {ms('init')}")
    print(f"(d)  warm pod, exec of the entrypoint -> its reply:    {ms('warm')}")
    rows = [("a", "farm", "this checkout")]
    if baseline is not None:
        rows.append(("a0", "base", str(args.baseline)))
    for label, key, what in rows:
        print(f"({label}) {what}, from POST /api/runs:")
        print(f"       -> pod created:                                 {ms(key + '_created')}")
        print(f"       -> pod Running:                                 {ms(key + '_running')}")
        print(f"       -> first agent event on SSE:                    {ms(key + '_event')}")
        print("       the pod's log timestamps (kubelet):")
        print(
            f"       -> entrypoint's first line:                     {ms(key + '_pod_entrypoint')}"
        )
        print(f"       -> clone done:                                  {ms(key + '_pod_cloned')}")
        print(f"       -> the CLI's first line:                        {ms(key + '_pod_cli')}")
        running, event = median(figures[key + "_running"]), median(figures[key + "_event"])
        print(
            f"       ratios: pod Running / (b) {running / bare:.2f}x; first agent event / (b') "
            f"first line {event / cli:.2f}x (/ (b) {event / bare:.2f}x)"
        )
    init, warm = median(figures["init"]) / bare, median(figures["warm"]) / bare
    print(f"(c)/(b) {init:.2f}x; (d)/(b) {warm:.2f}x")


if __name__ == "__main__":
    main()
