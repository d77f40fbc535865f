"""An ASGI app served by uvicorn from a daemon thread on a loopback port: how every fake
server of the tests runs, so sync tests, async tests and server subprocesses reach it alike."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


class ThreadedServer:
    def __init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, app: Any, host: str, port: int, *, name: str, what: str) -> int:
        """Serve ``app`` on ``host:port`` (0: any free port); the bound port once it answers."""
        # IPPROTO_TCP spelled out: accepted sockets inherit the listener's proto, and asyncio
        # sets TCP_NODELAY only on sockets whose proto says TCP. With proto 0, every response
        # on a kept-alive connection waited out the client's delayed ACK (about 40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            http="h11",
            timeout_graceful_shutdown=1,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = thread = threading.Thread(
            target=lambda: server.run(sockets=[sock]), name=name, daemon=True
        )
        thread.start()
        for _ in range(200):  # x 0.05 s
            if server.started or not thread.is_alive():
                break
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError(f"{what} did not start")
        return int(sock.getsockname()[1])

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None
