"""Shared parts of the agent and disk fault tests: a real server process on the local backend
(real bubblewrap, monitor and cgroups), scripted command agents, and what a test reads of the
server process (its peak memory, whether it still answers)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.integration.server import Server, events, post_run
from tests.realparts import missing

__all__ = ["events", "post_run"]

FINAL = {"succeeded", "failed", "stopped", "lost"}


def start_server(data_dir: Path, env: dict[str, str], log: Path) -> Server:
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    return Server(data_dir, {"AGENTFARM_STOP_GRACE_SECONDS": "2", **env}, log).start()


def launch(srv: Server, source: Path, argv: list[str], prompt: str = "go", **extra: Any) -> str:
    spec = {
        "repo": str(source),
        "prompt": prompt,
        "agent": "command",
        "command": {"argv": argv, "prompt": "none"},
        **extra,
    }
    run_id: str = post_run(srv, {"spec": spec})["id"]
    return run_id


def peak_rss_kib(srv: Server) -> int:
    """The server process's peak resident memory so far (VmHWM), in KiB."""
    assert srv.proc is not None
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def answers(srv: Server) -> bool:
    """The server answers its health check and the runs list (its event loop is not stuck)."""
    with srv.client() as c:
        try:
            return (
                c.get("/api/health", timeout=10).status_code == 200
                and c.get("/api/runs", timeout=10).status_code == 200
            )
        except httpx.HTTPError:
            return False


def marker() -> str:
    """A number no other test (nor another checkout's run of this one) uses: an agent passes it
    to `sleep`, so its processes can be found on the host."""
    return f"{secrets.randbelow(10**6) + 10**6}.{secrets.randbelow(10**6)}"


def stop_active(srv: Server) -> None:
    """Stops the server's runs that have not ended (runs outlive their server by design: a
    failed test must not leave its agents sleeping)."""
    with srv.client() as c, contextlib.suppress(httpx.HTTPError):
        for run in c.get("/api/runs", params={"limit": 200}).json():
            if run["status"] not in FINAL:
                c.post(f"/api/runs/{run['id']}/stop")


def run_processes(marker: str) -> list[str]:
    """Command lines of processes on the host that carry ``marker`` (a sandbox left behind)."""
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
