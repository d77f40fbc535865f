"""Network policies of the local backend against real bubblewrap: the egress proxy, the bridge
inside the sandbox, and the denial records. All traffic stays on this host's loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agentfarm.backends.local import egress
from agentfarm.backends.local.backend import LocalBackend
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests import realparts
from tests.integration.test_local_backend import agent, collect, new_run, stdout_lines

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _need_bwrap() -> None:
    if shutil.which("bwrap") is None:
        realparts.missing("bubblewrap", "apt-get install bubblewrap (make test does it)")


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the model endpoint"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    """An HTTP server on the host's loopback, standing in for the model endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # A name, not an address: the proxy resolves it (as an unprivileged user).
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def listener() -> Iterator[int]:
    """Another service on the host's loopback, which no sandbox may reach."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


PROBE = """
import json, os, socket, sys, time, urllib.request, urllib.error
out = {"proxy": os.environ.get("HTTPS_PROXY")}
out["ifaces"] = sorted(name for _, name in socket.if_nameindex())
def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
    except Exception as e:
        return ["error", repr(e)]
def connect(host, port):
    proxy = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    proxy.sendall(f"CONNECT {host}:{port} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n".encode())
    return proxy.recv(4096).decode(errors="replace").split("\\r\\n")[0]
def direct(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return "connected"
    except OSError as e:
        return repr(e)
model, other = sys.argv[1], int(sys.argv[2])
out["model"] = fetch(model + "/v1/hello")
out["invalid"] = connect("pypi.invalid", 443)
out["loopback_via_proxy"] = fetch(f"http://127.0.0.1:{other}/")
out["loopback_direct"] = direct(other)
out["metadata"] = connect("169.254.169.254", 80)
print(json.dumps(out), flush=True)
time.sleep(1)  # still running while the test looks at its monitor
""".replace("PORT", str(egress.SANDBOX_PORT))


@asynccontextmanager
async def local_backend(tmp_path: Path, pooled: bool) -> AsyncIterator[LocalBackend]:
    """A backend whose launch takes an idle monitor (which forked its egress proxy while it
    waited), or one that starts its monitor at launch."""
    backend = LocalBackend(Settings(data_dir=tmp_path / "data", local_clone_pool=0))
    if pooled:
        await backend.astart()
        deadline = time.monotonic() + 20
        while not backend.monitors._idle and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert backend.monitors._idle, "no idle monitor started"
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest.mark.parametrize("pooled", [False, True], ids=["own-monitor", "idle-monitor"])
@pytest.mark.parametrize("via", ["auto", "bridge"])
async def test_allowlist_reaches_only_the_model_endpoint(
    tmp_path: Path, source: Path, endpoint: str, listener: int, via: str, pooled: bool
) -> None:
    # auto: the launcher's own namespace as root (the bridge otherwise); bridge: forced.
    async with local_backend(tmp_path, pooled) as backend:
        backend.egress_via = via
        run = new_run(source)
        program = agent(tmp_path, "probe", PROBE)
        command = AgentCommand(argv=[program, endpoint, str(listener)], env={})
        handle, info = await backend.launch(
            run, LaunchSpec.of(run.id, command, {"ANTHROPIC_BASE_URL": endpoint})
        )
        kids = monitor_children(backend.run_dir(run.id))
        records = await collect(handle.records(0))
    # The proxy is the monitor's child, forked ahead of need by an idle one, or at launch.
    assert egress.PROXY_NAME in kids and len(kids) == 2, kids  # and the sandbox
    assert records[-1].exit is not None and records[-1].exit.exit_code == 0, records
    out = json.loads(stdout_lines(records)[0])
    assert out["ifaces"] == ["lo"]
    assert out["proxy"] == f"http://127.0.0.1:{egress.SANDBOX_PORT}"
    assert out["model"] == [200, "hello from the model endpoint"]
    assert out["invalid"].startswith("HTTP/1.1 403"), out
    assert out["loopback_via_proxy"][0] == 403, out
    assert "connected" not in out["loopback_direct"]
    assert out["metadata"].startswith("HTTP/1.1 403"), out
    denied = [json.loads(r.data) for r in records if r.kind == "egress"]
    assert len(denied) == 3, denied
    targets = {(d["host"], d["port"]) for d in denied}
    assert ("pypi.invalid", 443) in targets
    assert ("127.0.0.1", listener) in targets
    assert ("169.254.169.254", 80) in targets
    assert all(d["reason"] for d in denied)
    assert any("allowlist" in n and endpoint.removeprefix("http://") in n for n in info.notices)


@pytest.mark.parametrize("pooled", [False, True], ids=["own-monitor", "idle-monitor"])
async def test_policies_none_and_open(
    tmp_path: Path, source: Path, listener: int, pooled: bool
) -> None:
    program = agent(tmp_path, "direct", DIRECT)
    found = {}
    async with local_backend(tmp_path, pooled) as backend:
        for network in ("none", "open"):
            run = new_run(source, network=network)
            command = AgentCommand(argv=[program, str(listener)], env={})
            handle, info = await backend.launch(run, LaunchSpec.of(run.id, command, {}))
            # The agent runs: an idle monitor's proxy, which this run did not need, is gone
            # (exited and reaped, no zombie); a monitor of its own never forked one.
            kids = monitor_children(backend.run_dir(run.id))
            assert egress.PROXY_NAME not in kids and len(kids) == 1, kids
            records = await collect(handle.records(0))
            found[network] = (json.loads(stdout_lines(records)[0]), info.notices)
    out, notices = found["none"]
    assert out["ifaces"] == ["lo"] and out["proxy"] is None and out["direct"] != "connected"
    assert any("no network" in n for n in notices)
    out, notices = found["open"]
    assert out["direct"] == "connected" and len(out["ifaces"]) > 1
    assert any("sandbox.network is open" in n for n in notices)


def monitor_children(run_dir: Path) -> list[bytes]:
    """The names of the run's monitor's children (while the agent runs)."""
    pid = json.loads((run_dir / "monitor.json").read_text())["pid"]
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [Path(f"/proc/{kid}/comm").read_bytes().strip() for kid in kids]


DIRECT = """
import json, os, socket, sys, time
out = {"proxy": os.environ.get("HTTPS_PROXY")}
out["ifaces"] = sorted(name for _, name in socket.if_nameindex())
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    out["direct"] = "connected"
except OSError as e:
    out["direct"] = repr(e)
print(json.dumps(out), flush=True)
time.sleep(1)  # still running while the test looks at its monitor
"""
