"""A stand-in kubelet for tier A: container logs the API server proxies, and pod states.

Tier A has no kubelet, so ``pods/log`` answers 500 there. This module registers a Node whose
address is loopback and whose kubelet port is a small HTTPS server in the test's process
(:class:`FakeKubelet`): the API server proxies ``GET pods/<name>/log`` to it as it would to a
real kubelet (``/containerLogs/<ns>/<pod>/<container>``, with ``follow`` and ``sinceSeconds``),
so the backend reads logs through the real API server. Without ``--kubelet-certificate-authority``
the API server does not check the kubelet's certificate; this server accepts any caller (it
listens on loopback only). :class:`Driver` plays the rest of the kubelet: it binds pods to the
node and writes their ``status`` subresource, over one async HTTP session with the admin token.

Used by tests/k8s/test_backend_restart.py and bench/k8s_scale.py.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.k8s import cluster, processes

NODE = "sim-node"


@dataclass
class ContainerLog:
    """One container's log: (wall time, line) pairs; ``ended`` once the container exited."""

    lines: list[tuple[float, bytes]] = field(default_factory=list)
    ended: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def write(self, line: bytes) -> None:
        self.lines.append((time.time(), line))
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class FakeKubelet:
    """The log endpoint of a kubelet on 127.0.0.1, over TLS with the test CA's server key."""

    def __init__(self, target: cluster.Cluster) -> None:
        self.target = target
        self.logs: dict[tuple[str, str, str], ContainerLog] = {}
        #: Log requests served: (namespace, pod, follow, sinceSeconds).
        self.requests: list[tuple[str, str, bool, int | None]] = []
        self.open_streams = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._streams: set[web.StreamResponse] = set()

    def log(self, namespace: str, pod: str, container: str = "agent") -> ContainerLog:
        return self.logs.setdefault((namespace, pod, container), ContainerLog())

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        keys = self.target.workdir / "pki"
        context.load_cert_chain(keys / "apiserver.crt", keys / "apiserver.key")
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        await asyncio.to_thread(self._register_node)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            },
        }
        self.target.request("DELETE", f"/api/v1/nodes/{NODE}")
        self.target.ensure("/api/v1/nodes", body)
        patch = {"status": body["status"]}
        status, result = self.target.request(
            "PATCH", f"/api/v1/nodes/{NODE}/status", patch,
            content_type="application/merge-patch+json",
        )  # fmt: skip
        if status >= 300:
            raise cluster.ClusterError(f"cannot set the fake node's address: {result}")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        ns, pod = request.match_info["ns"], request.match_info["pod"]
        container = request.match_info["container"]
        follow = request.query.get("follow") == "true"
        since = request.query.get("sinceSeconds")
        since_s = int(since) if since and since.isdigit() else None
        self.requests.append((ns, pod, follow, since_s))
        log = self.log(ns, pod, container)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        try:
            await response.prepare(request)
        except ConnectionResetError:  # the API server gave up on this request already
            return response
        self.open_streams += 1
        self._streams.add(response)
        try:
            start = time.time() - since_s if since_s is not None else 0.0
            sent = 0
            while True:
                chunk = [line for at, line in log.lines[sent:] if at >= start]
                sent = len(log.lines)
                if chunk:
                    await response.write(b"".join(line + b"\n" for line in chunk))
                if log.ended or not follow:
                    break
                await log.changed.wait()
            await response.write_eof()
        except ConnectionResetError:
            pass  # the reader went away (a reopened follow, an API server restart)
        finally:
            self.open_streams -= 1
            self._streams.discard(response)
        return response


def running_state(started: str = "2026-01-01T00:00:01Z") -> dict[str, Any]:
    return {"running": {"startedAt": started}}


def container(name: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "ready": "running" in state,
        "restartCount": 0,
        "image": "agentfarm.local/agent:1",
        "imageID": "",
    }


class Driver:
    """Plays the kubelet's API side for many pods at once: bind, status, watch."""

    def __init__(self, target: cluster.Cluster, namespace: str) -> None:
        self.target = target
        self.namespace = namespace
        self.requests = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Driver:
        context = ssl.create_default_context(cafile=str(self.target.ca_file))
        self._session = aiohttp.ClientSession(
            base_url=self.target.server,
            headers={"Authorization": f"Bearer {self.target.admin_token}"},
            connector=aiohttp.TCPConnector(ssl=context, limit=32),
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _pod(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{name}"

    async def _call(
        self, method: str, path: str, body: Any, content_type: str = "application/json"
    ) -> Any:
        assert self._session is not None
        for attempt in range(100):
            self.requests += 1
            try:
                async with self._session.request(
                    method, path, data=json.dumps(body), headers={"Content-Type": content_type}
                ) as response:
                    text = await response.text()
                    if response.status < 300:
                        return json.loads(text)
                    if response.status not in (409, 429, 500, 503) or attempt > 50:
                        raise cluster.ClusterError(f"{method} {path} -> {response.status}: {text}")
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt > 90:
                    raise
            await asyncio.sleep(0.2)  # the API server restarts, or is busy: try again
        raise cluster.ClusterError(f"{method} {path}: no answer")

    async def bind(self, name: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
        }
        await self._call("POST", self._pod(name) + "/binding", body)

    async def status(self, name: str, **status: Any) -> None:
        await self._call(
            "PATCH", self._pod(name) + "/status", {"status": status},
            "application/merge-patch+json",
        )  # fmt: skip

    async def running(self, name: str) -> None:
        await self.status(
            name, phase="Running", containerStatuses=[container("agent", running_state())]
        )

    async def succeeded(self, name: str, code: int = 0) -> None:
        state = {"terminated": {"exitCode": code, "reason": "Completed" if not code else "Error",
                                "finishedAt": "2026-01-01T00:00:02Z"}}  # fmt: skip
        await self.status(
            name, phase="Succeeded" if not code else "Failed",
            containerStatuses=[container("agent", state)],
        )  # fmt: skip

    async def new_pods(self, label_selector: str) -> AsyncIterator[str]:
        """Names of the pods created in the namespace from now on (a watch, renewed)."""
        assert self._session is not None
        seen: set[str] = set()
        version = ""
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        while True:
            params = {"watch": "1", "labelSelector": label_selector, "timeoutSeconds": "300"}
            if version:
                params["resourceVersion"] = version
            try:
                self.requests += 1
                async with self._session.get(path, params=params, timeout=None) as response:
                    async for raw in response.content:
                        event = json.loads(raw)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            version = ""
                            break
                        meta = obj.get("metadata") or {}
                        version = meta.get("resourceVersion", version)
                        name = meta.get("name")
                        if event.get("type") == "ADDED" and name and name not in seen:
                            seen.add(name)
                            yield name
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.2)


def entrypoint_line(seq: int, payload: bytes, kind: str = "O") -> bytes:
    """A log line as deploy/agent/entrypoint.py writes it."""
    return b"\x1e%s%d %s" % (kind.encode(), seq, payload)


def restart_apiserver(target: cluster.Cluster, down_seconds: float = 1.0) -> float:
    """Stop the cluster's kube-apiserver, leave it down ``down_seconds``, start it again with
    the same arguments (same port, same etcd); returns the seconds it was unreachable."""
    pid = target.pids["kube-apiserver"]
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    began = time.monotonic()
    processes.terminate(pid, timeout=10)
    old = target.procs.pop("kube-apiserver", None)
    if old is not None:
        old.wait(timeout=10)
    time.sleep(down_seconds)
    logs = {"kube-apiserver": target.workdir / "logs" / "kube-apiserver.log"}
    proc = processes.spawn(argv, logs["kube-apiserver"], cwd=target.workdir, tie_to_parent=True)
    target.track("kube-apiserver", proc)
    processes.wait_until(
        "kube-apiserver /readyz after a restart",
        lambda: cluster.readyz(target.server, target.admin_token, target.ca_file),
        60,
        logs,
        {"kube-apiserver": proc.pid},
    )
    return time.monotonic() - began
