"""A real agentfarm server in a subprocess (`agentfarm serve`), for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

TOKEN = "e2e-token-0123456789abcdef"
#: Debian's chromium, as browser tests and benchmarks launch it (headless, as root, offline).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(
        self, data_dir: Path, env: dict[str, str], log: Path, *, argv: list[str] | None = None
    ) -> None:
        self.data_dir = data_dir
        #: The command that serves (default: this interpreter's ``agentfarm serve``).
        self.argv = argv
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "AGENTFARM_DATA_DIR": str(data_dir),
            "AGENTFARM_PORT": str(self.port),
            "AGENTFARM_TOKEN": TOKEN,
            "AGENTFARM_URL": self.url,
            **env,
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        #: The server program (a benchmark may start another checkout's, side by side).
        self.program = Path(sys.executable).with_name("agentfarm")

    @property
    def cli_env(self) -> dict[str, str]:
        return {**self.env, "COLUMNS": "200"}

    def start(self) -> Server:
        argv = self.argv or [str(self.program), "serve"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not come up: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        agentfarm = Path(sys.executable).with_name("agentfarm")
        return subprocess.run(
            [str(agentfarm), *args],
            env=self.cli_env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )

    def iter_sse(self, run_id: str, timeout: float = 90) -> Iterator[dict[str, Any]]:
        """The run's events as an SSE client sees them, until the stream's end."""
        with (
            self.client() as c,
            c.stream(
                "GET",
                f"/api/runs/{run_id}/events",
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(timeout),
            ) as response,
        ):
            if response.status_code != 200:
                raise AssertionError(f"SSE answered {response.status_code}")
            for line in response.iter_lines():
                if line.startswith("event: end"):
                    return
                if line.startswith("data:"):
                    yield json.loads(line[5:])

    def wait_status(self, run_id: str, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                run: dict[str, Any] = c.get(f"/api/runs/{run_id}").json()
                if run["status"] in statuses:
                    return run
                if time.monotonic() > deadline:
                    raise AssertionError(f"run {run_id} still {run['status']}: {run}")
                time.sleep(0.1)


def post_run(srv: Server, body: dict[str, Any]) -> dict[str, Any]:
    """Launches a run through ``POST /api/runs`` (``{"spec": ...}`` or ``{"config": ...}``);
    the created run."""
    with srv.client() as c:
        response = c.post("/api/runs", json=body)
        assert response.status_code == 201, response.text
        run: dict[str, Any] = response.json()
        return run


def events(srv: Server, run_id: str) -> list[dict[str, Any]]:
    """The run's stored events."""
    with srv.client() as c:
        found: list[dict[str, Any]] = c.get(f"/api/runs/{run_id}/events").json()
        return found
