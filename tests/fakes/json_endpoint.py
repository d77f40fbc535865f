"""A JSON webhook receiver on a loopback port: what Apprise's ``json://`` and a Web Push
service receive in the tests. Records each POST (path, headers, body); a path under
``/hang`` holds its request until ``release()``, as an endpoint that never answers does;
``/push...`` answers 201 as a push service, ``/gone...`` 410 as one whose subscription ended."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class JsonEndpoint:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[Received] = []
        self._changed = threading.Condition()
        self._release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with endpoint._changed:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    endpoint.received.append(Received(self.path, headers, body))
                    endpoint._changed.notify_all()
                if self.path.startswith("/hang"):
                    endpoint._release.wait()
                code = endpoint.status
                if self.path.startswith("/push"):  # a Web Push service: 201 Created
                    code = 201
                elif self.path.startswith("/gone"):  # a subscription the browser dropped
                    code = 410
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook", scheme: str = "json") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        """The first ``count`` requests, once they have arrived (``timeout``: a hang guard)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} of {count} requests arrived")
            return list(self.received[:count])

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
