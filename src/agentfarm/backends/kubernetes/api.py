"""The few API calls the backend makes, as JSON in and out, over kubernetes_asyncio.

Responses are read raw (``_preload_content=False``) and decoded here: every field the server
sends is kept (the generated models drop what they do not know), every response is closed,
and failures become :class:`ApiError` with the server's own message.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.stream import WsApiClient

from agentfarm.domain import errors

Json = dict[str, Any]

#: Bytes a log line may reach before it is cut (the adapter copes with partial lines).
MAX_LINE = 16 * 1024 * 1024
#: What an exec'd command may print before the rest is dropped (its reply is one short line).
EXEC_OUTPUT_LIMIT = 64 * 1024
EXEC_SECONDS = 30
#: Stdin goes in websocket messages of at most this many bytes.
EXEC_CHUNK = 256 * 1024


class ApiError(errors.BackendError):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"Kubernetes API error {status}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


#: Connections beyond the followed logs: the pod watches, launches, reads, deletes.
SPARE_CONNECTIONS = 64


async def connect(kubeconfig: Path | None, *, log_streams: int = 100) -> client.ApiClient:
    """An API client from ``kubeconfig``, else in-cluster config inside a pod, else the default
    kubeconfig (``$KUBECONFIG`` or ~/.kube/config). Every followed log holds a connection of
    its own (HTTP/1.1): the pool has room for ``log_streams`` of them and the other calls."""
    configuration = client.Configuration()
    # The client's default pool (100) would let followed logs starve every other call.
    configuration.connection_pool_maxsize = log_streams + SPARE_CONNECTIONS
    try:
        if kubeconfig is not None:
            await config.load_kube_config(
                config_file=str(kubeconfig), client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            await asyncio.to_thread(
                config.load_incluster_config, client_configuration=configuration
            )
        else:
            await config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        raise errors.ConfigurationError(
            f"cannot configure the Kubernetes client: {exc}; set AGENTFARM_K8S_KUBECONFIG "
            "or run the control plane inside the cluster"
        ) from exc
    return client.ApiClient(configuration=configuration)


class Api:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        # Bodies are plain JSON dicts, which the generated signatures do not describe.
        self.core: Any = client.CoreV1Api(api_client)

    async def _call(self, pending: Any) -> Json:
        response: Any = await pending
        async with response:
            body = await response.read()
            if response.status >= 400:
                raise _error(response.status, body)
        result: Json = json.loads(body) if body else {}
        return result

    async def create_secret(self, namespace: str, body: Json) -> Json:
        return await self._call(
            self.core.create_namespaced_secret(namespace, body, _preload_content=False)
        )

    async def patch_secret(self, namespace: str, name: str, patch: Json) -> Json:
        return await self._call(
            self.core.patch_namespaced_secret(
                name, namespace, patch, _preload_content=False,
                _content_type="application/merge-patch+json",
            )
        )  # fmt: skip

    async def get_secret(self, namespace: str, name: str) -> Json | None:
        try:
            return await self._call(
                self.core.read_namespaced_secret(name, namespace, _preload_content=False)
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._ignore_404(
            self.core.delete_namespaced_secret(name, namespace, _preload_content=False)
        )

    async def create_pod(self, namespace: str, body: Json) -> Json:
        return await self._call(
            self.core.create_namespaced_pod(namespace, body, _preload_content=False)
        )

    async def get_pod(self, namespace: str, name: str) -> Json | None:
        try:
            return await self._call(
                self.core.read_namespaced_pod(name, namespace, _preload_content=False)
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_pods(self, namespace: str, label_selector: str) -> Json:
        return await self._call(
            self.core.list_namespaced_pod(
                namespace, label_selector=label_selector, _preload_content=False
            )
        )

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int) -> None:
        body = {"gracePeriodSeconds": grace_seconds, "propagationPolicy": "Background"}
        await self._ignore_404(
            self.core.delete_namespaced_pod(name, namespace, body=body, _preload_content=False)
        )

    async def _ignore_404(self, pending: Any) -> None:
        try:
            await self._call(pending)
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def watch_pod(
        self, namespace: str, name: str, resource_version: str, server_timeout: int
    ) -> AsyncIterator[tuple[str, Json]]:
        """(type, object) events for one pod after ``resource_version`` (server ends it)."""
        response: Any = await self.core.list_namespaced_pod(
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            watch=True,
            timeout_seconds=server_timeout,
            allow_watch_bookmarks=False,
            _preload_content=False,
        )
        async for kind, obj in _watch_events(response):
            yield kind, obj

    async def watch_pods(
        self,
        namespace: str,
        label_selector: str,
        resource_version: str,
        server_timeout: int,
        opened: Callable[[Any], None] | None = None,
    ) -> AsyncIterator[tuple[str, Json]]:
        """(type, object) events for the pods matching ``label_selector`` after
        ``resource_version``, BOOKMARK events included (they carry only a newer version). The
        server ends the stream after ``server_timeout`` seconds; an ERROR event raises
        :class:`ApiError` (410: the version is too old, list again). ``opened(response)`` is
        called once the server has answered (its connection can then be aborted)."""
        response: Any = await self.core.list_namespaced_pod(
            namespace,
            label_selector=label_selector,
            resource_version=resource_version,
            watch=True,
            timeout_seconds=server_timeout,
            allow_watch_bookmarks=True,
            _preload_content=False,
        )
        if opened is not None:
            opened(response)
        async for kind, obj in _watch_events(response):
            yield kind, obj

    async def pod_log(
        self,
        namespace: str,
        name: str,
        container: str,
        *,
        follow: bool,
        since_seconds: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The container's log, line by line (without newlines), from its start (or from
        ``since_seconds`` ago)."""
        options: dict[str, Any] = {"since_seconds": since_seconds} if since_seconds else {}
        response: Any = await self.core.read_namespaced_pod_log(
            name, namespace, container=container, follow=follow, _preload_content=False,
            **options,
        )  # fmt: skip
        async with response:
            if response.status >= 400:
                raise _error(response.status, await response.read())
            try:
                async for line in _lines(response.content):
                    yield line
            except (GeneratorExit, asyncio.CancelledError):
                abort(response)  # given up before its end (a reopen, a stop)
                raise

    async def exec_pod(
        self, namespace: str, name: str, container: str, command: list[str], stdin: bytes,
        *, limit: int = EXEC_OUTPUT_LIMIT, seconds: float = EXEC_SECONDS,
    ) -> tuple[bytes, str | None]:  # fmt: skip
        """Run ``command`` in a running container with ``stdin`` (the exec API over a
        websocket, ``v4.channel.k8s.io``), for at most ``seconds``: its stdout (cut at
        ``limit`` bytes) and its failure (None: exit 0). The command must stop reading at its
        own end of input: this protocol cannot close stdin."""
        ws_client = WsApiClient(configuration=self.api_client.configuration)
        out = bytearray()
        failure: str | None = None
        try:
            core: Any = client.CoreV1Api(ws_client)
            async with asyncio.timeout(seconds):
                pending = await core.connect_get_namespaced_pod_exec(
                    name, namespace, container=container, command=command, stdin=True,
                    stdout=True, stderr=True, tty=False, _preload_content=False,
                )  # fmt: skip
                async with pending as sock:
                    for start in range(0, len(stdin), EXEC_CHUNK):
                        await sock.send_bytes(b"\x00" + stdin[start : start + EXEC_CHUNK])
                    async for message in sock:
                        data = message.data if isinstance(message.data, bytes) else b""
                        if data[:1] == b"\x01" and len(out) < limit:
                            out += data[1 : 1 + limit - len(out)]
                        elif data[:1] == b"\x03" and len(data) > 1:
                            failure = _exec_failure(data[1:])
        except aiohttp.WSServerHandshakeError as exc:
            raise ApiError(exc.status, f"exec in pod {namespace}/{name}: {exc.message}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.BackendError(
                f"exec in pod {namespace}/{name} failed ({exc!r}); is the pod still running?"
            ) from None
        finally:
            await ws_client.close()
        return bytes(out), failure


def abort(response: Any) -> None:
    """Drop a streamed response's connection at once. Closing it would start a TLS close that
    waits for the server's answer; an event loop about to stop never reads it, and the socket
    is left behind."""
    transport = getattr(getattr(response, "connection", None), "transport", None)
    if transport is not None:
        transport.abort()


def _exec_failure(status: bytes) -> str | None:
    """The exec's final status (channel 3): None when it succeeded, else its message."""
    try:
        body = json.loads(status)
    except ValueError:
        return status.decode(errors="replace")[:500]
    if not isinstance(body, dict) or body.get("status") == "Success":
        return None
    return str(body.get("message") or "the command failed")[:500]


async def _lines(stream: Any) -> AsyncIterator[bytes]:
    """Split a byte stream into lines; a final line without its newline is dropped (torn)."""
    buffer = bytearray()
    async for chunk in stream.iter_any():
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            yield bytes(buffer[start:end])
            start = end + 1
        del buffer[:start]
        if len(buffer) > MAX_LINE:
            yield bytes(buffer)
            buffer.clear()


def _error(status: int, body: bytes) -> ApiError:
    try:
        payload = json.loads(body)
        return ApiError(status, str(payload.get("message")), str(payload.get("reason", "")))
    except (ValueError, AttributeError):
        return ApiError(status, body.decode(errors="replace")[:500])


async def _watch_events(response: Any) -> AsyncIterator[tuple[str, Json]]:
    """A watch response's (type, object) events; an ERROR event raises :class:`ApiError`."""
    async with response:
        if response.status >= 400:
            raise _error(response.status, await response.read())
        async for line in _lines(response.content):
            event = json.loads(line)
            kind = str(event.get("type"))
            obj = event.get("object") or {}
            if kind == "ERROR":
                raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
            yield kind, obj
