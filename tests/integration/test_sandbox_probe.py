"""The sandbox probe suite (local backend): a real Claude Code agent in a real bubblewrap
sandbox, with the default network policy, tries everything it must not reach. Only the model
endpoint answers.

The server runs the set-up the README invites for a forward-auth gate on the same host
(trusted proxy 127.0.0.1, header Remote-User). All traffic stays on this host's loopback: the
control plane, a listener the test opens, a port another run (with ``network: open``) listens
on, and the fake model. The one outside name tried is a ``.invalid`` one, which the proxy
refuses before any DNS look-up.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api as fake
from tests.integration.server import Server, events, free_port, post_run
from tests.realparts import missing

pytestmark = pytest.mark.integration


@pytest.fixture
def server(
    claude_bin: str, fake_anthropic: fake.FakeAnthropic, serve: Callable[[dict[str, str]], Server]
) -> Server:
    if shutil.which("curl") is None:
        missing("curl", "apt-get install curl")
    return serve(
        {
            "AGENTFARM_CLAUDE_BIN": claude_bin,
            "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-probe-secret-value",
            "AGENTFARM_STOP_GRACE_SECONDS": "2",
            "AGENTFARM_TRUSTED_PROXIES": "127.0.0.1",
            "AGENTFARM_FORWARD_AUTH_HEADER": "Remote-User",
        }
    )


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A service on the host's loopback (a database, a k3s API...)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def launch(srv: Server, spec: dict[str, Any]) -> str:
    body = {"env": {"CLAUDE_CODE_MAX_RETRIES": "0"}, **spec}
    run_id: str = post_run(srv, {"spec": body})["id"]
    return run_id


def wait_listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.2)


def probe_script(srv: Server, model: str, ports: dict[str, int], planted: list[Path]) -> str:
    lines = [
        "code() { curl -s -o /dev/null -m 5 -w '%{http_code}/%{http_connect}' \"$@\"; }",
        f"echo model=$(code {model}/api/hello)",
        f"echo cp_proxy=$(code http://127.0.0.1:{srv.port}/api/health)",
        f"echo cp_direct=$(code --noproxy '*' http://127.0.0.1:{srv.port}/api/health)",
        f"echo forged_proxy=$(code -H 'Remote-User: admin' http://127.0.0.1:{srv.port}/settings)",
        f"echo forged_direct=$(code --noproxy '*' -H 'Remote-User: admin' "
        f"http://127.0.0.1:{srv.port}/settings)",
        "echo invalid=$(code https://pypi.invalid/simple/)",
        f"ls {srv.data_dir} >/dev/null 2>&1; echo data_dir=$?",
        f"cat {srv.data_dir}/agentfarm.db >/dev/null 2>&1; echo database=$?",
    ]
    for name, port in ports.items():
        lines.append(f"echo {name}_proxy=$(code http://127.0.0.1:{port}/)")
        lines.append(f"echo {name}_direct=$(code --noproxy '*' http://127.0.0.1:{port}/)")
    for i, path in enumerate(planted):
        lines.append(f"echo planted > {path} 2>/dev/null; echo write{i}=$?")
    return "\n".join(lines)


def parse(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key.strip()] = value.strip()
    return found


def test_only_the_model_endpoint_is_reachable(
    server: Server,
    source: Path,
    tmp_path: Path,
    host_listener: int,
    fake_anthropic: fake.FakeAnthropic,
) -> None:
    # Another run, with the host's network, listens on a loopback port.
    other_port = free_port()
    listen = (
        'python3 -c "import socket, time; s = socket.socket(); '
        f"s.bind(('127.0.0.1', {other_port})); s.listen(8); time.sleep(600)\""
    )
    marker = fake_anthropic.register(
        "probe-listener",
        [fake.tool_use("Bash", {"command": listen, "description": "listen"}), fake.text("ok")],
    )
    other = launch(
        server,
        {"repo": str(source), "prompt": f"{marker} listen", "sandbox": {"network": "open"}},
    )
    try:
        wait_listening(other_port)

        planted = [
            server.data_dir / "planted.txt",
            Path("/usr/planted.txt"),
            source / "planted.txt",
            tmp_path / "planted.txt",
        ]
        ports = {"listener": host_listener, "other_run": other_port}
        script = probe_script(server, fake_anthropic.base_url, ports, planted)
        marker = fake_anthropic.register(
            "probe-everything",
            [fake.tool_use("Bash", {"command": script, "description": "probe"}), fake.text("ok")],
        )
        run_id = launch(server, {"repo": str(source), "prompt": f"{marker} look around"})
        done = server.wait_status(run_id, {"succeeded", "failed", "stopped", "lost"}, timeout=90)
        assert done["status"] == "succeeded", done
        stored = events(server, run_id)
        result = next(e for e in stored if e["type"] == "agent.tool_result")
        out = parse(result["data"]["content"])

        # The model endpoint answers through the proxy; nothing else does.
        assert out["model"].startswith("200/"), out
        for name in ("cp", "forged", "listener", "other_run"):
            assert out[f"{name}_proxy"] == "403/000", (name, out)  # refused by the egress proxy
            assert out[f"{name}_direct"] == "000/000", (name, out)  # no route out of the namespace
        assert out["invalid"] == "000/403", out  # CONNECT refused
        assert out["data_dir"] != "0" and out["database"] != "0", out
        # Nothing lands on the host. (Where a bind's parent directories exist in the sandbox, a
        # write may succeed, but into the sandbox's own throw-away root.)
        for path in planted:
            assert not path.exists(), path
        # The data directory is absent in the sandbox, /usr is read-only.
        assert out["write0"] != "0" and out["write1"] != "0", out

        denied = {
            (e["data"]["host"], e["data"]["port"]): e["data"]["reason"]
            for e in stored
            if e["type"] == "sandbox.egress_denied"
        }
        for port in (server.port, host_listener, other_port):
            assert ("127.0.0.1", port) in denied, denied
        assert "allow-list" in denied[("pypi.invalid", 443)]
        notices = [e["data"]["message"] for e in stored if e["type"] == "run.notice"]
        assert any(n.startswith("network: allowlist") for n in notices), notices

        # The other run said at its start that its network is open.
        other_notices = [
            e["data"]["message"] for e in events(server, other) if e["type"] == "run.notice"
        ]
        assert any("sandbox.network is open" in n for n in other_notices), other_notices
    finally:
        # Runs outlive the server by design: never leave the listener behind.
        server.cli("stop", other)
        server.wait_status(other, {"stopped", "failed", "succeeded", "lost"}, timeout=30)
