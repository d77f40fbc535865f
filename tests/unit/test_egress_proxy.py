"""The egress proxy with a recording resolver and connector: a refused request never gets to
DNS or to a connection; an allowed one connects to the address that was checked.

The only real connections go to a server this test opens on 127.0.0.1; the addresses the fake
resolver returns are data.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentfarm.backends.local import egress, egress_proxy
from agentfarm.domain import egress as policies


@dataclass
class Recorder:
    """Resolves names from a table and connects every address to the local test server."""

    table: dict[str, list[str]]
    server_port: int
    resolved: list[str] = field(default_factory=list)
    connected: list[tuple[str, int]] = field(default_factory=list)
    reports: list[dict[str, object]] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append(host)
        if host not in self.table:
            raise OSError(f"{host}: name not known")
        return self.table[host]

    async def connect(
        self, address: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.connected.append((address, port))
        return await asyncio.open_connection("127.0.0.1", self.server_port)


@dataclass
class Setup:
    recorder: Recorder
    socket: str
    upstream: list[bytes]

    async def ask(self, request: bytes) -> bytes:
        reader, writer = await asyncio.open_unix_connection(self.socket)
        writer.write(request)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        return data


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    upstream: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        upstream.append(data)
        head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"
        writer.write(head + b"ok" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    recorder = Recorder(
        table={
            "pypi.org": ["151.101.0.223"],
            "rebind.example": ["151.101.0.223", "127.0.0.1"],
            "internal.example": ["10.0.0.7"],
            "meta.example": ["169.254.169.254"],
        },
        server_port=port,
    )
    policy = policies.build_policy(
        ["pypi.org", "rebind.example", "internal.example", "meta.example", "10.9.9.9:5000"],
        model_url="http://127.0.0.1:8765",
        remote=None,
        control=[("127.0.0.1", 8080)],
    )
    proxy = egress_proxy.Proxy(
        policy, recorder.reports.append, resolve=recorder.resolve, connect=recorder.connect
    )
    path = str(tmp_path / "egress.sock")
    front = await asyncio.start_unix_server(proxy.handle, path, limit=egress_proxy.MAX_HEAD)
    yield Setup(recorder, path, upstream)
    front.close()
    server.close()
    await front.wait_closed()
    await server.wait_closed()


def connect(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("169.254.169.254:80", "allow-list"),
        ("[fe80::1]:80", "allow-list"),
        ("10.0.0.1:443", "allow-list"),
        ("192.168.1.1:443", "allow-list"),
        ("127.0.0.1:22", "allow-list"),
        ("127.0.0.1:8080", "allow-list"),
        ("pypi.invalid:443", "allow-list"),
        ("pypi.org:22", "allow-list"),
    ],
)
async def test_refused_before_any_dns_or_connection(setup: Setup, target: str, words: str) -> None:
    answer = await setup.ask(connect(target))
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert setup.recorder.resolved == [] and setup.recorder.connected == []
    [report] = setup.recorder.reports
    host, port = target.rsplit(":", 1)
    assert report["host"] == host.strip("[]") and report["port"] == int(port)
    assert isinstance(report["reason"], str) and words in report["reason"]


async def test_link_local_literal_named_in_config_is_still_refused_without_connecting(
    tmp_path: Path, setup: Setup
) -> None:
    policy = policies.build_policy(["169.254.169.254:80"], model_url=None, remote=None, control=[])
    proxy = egress_proxy.Proxy(
        policy, setup.recorder.reports.append,
        resolve=setup.recorder.resolve, connect=setup.recorder.connect,
    )  # fmt: skip
    with pytest.raises(egress_proxy.Denied) as info:
        await proxy.open(egress_proxy.Request("CONNECT", "169.254.169.254", 80))
    assert info.value.status == 403 and "link-local" in info.value.reason
    assert setup.recorder.connected == [] and setup.recorder.resolved == []


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("internal.example", "private"),
        ("meta.example", "link-local"),
        ("rebind.example", "own address"),  # one bad address of several is enough
    ],
)
async def test_resolved_addresses_are_checked_before_connecting(
    setup: Setup, host: str, words: str
) -> None:
    answer = await setup.ask(connect(f"{host}:443"))
    assert answer.startswith(b"HTTP/1.1 403") and words.encode() in answer, answer
    assert setup.recorder.resolved == [host]
    assert setup.recorder.connected == []


async def test_allowed_connect_tunnels_to_the_checked_address(setup: Setup) -> None:
    answer = await setup.ask(connect("PyPI.org:443") + b"hello through the tunnel")
    assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\n"), answer
    assert answer.endswith(b"okhello through the tunnel")
    assert setup.recorder.connected == [("151.101.0.223", 443)]
    assert setup.recorder.reports == []


async def test_named_private_literal_and_model_endpoint_on_loopback_connect(setup: Setup) -> None:
    assert (await setup.ask(connect("10.9.9.9:5000"))).startswith(b"HTTP/1.1 200")
    request = (
        b"POST http://127.0.0.1:8765/v1/messages?beta=true HTTP/1.1\r\n"
        b"Host: 127.0.0.1:8765\r\nProxy-Connection: keep-alive\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nConnection: keep-alive\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    answer = await setup.ask(request)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
    assert setup.recorder.connected == [("10.9.9.9", 5000), ("127.0.0.1", 8765)]
    assert setup.recorder.resolved == []  # literals are not looked up
    sent = setup.upstream[-1]
    head, _, body = sent.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/messages?beta=true HTTP/1.1"
    assert b"Host: 127.0.0.1:8765" in lines and b"Connection: close" in lines
    assert not any(x.lower().startswith((b"proxy-", b"connection: keep")) for x in lines)
    assert body == b"{}"


async def test_a_forwarded_request_names_the_checked_host_only(setup: Setup) -> None:
    # RFC 9112 3.2.2: a proxy replaces the Host of an absolute-form request with the target's.
    # Passed on, it would pick another site behind the allowed one's address (a CDN's).
    request = (
        b"GET http://user@PyPI.org/simple/ HTTP/1.1\r\nHost: evil.example\r\n"
        b"host: evil2.example\r\nAccept: */*\r\n\r\n"
    )
    answer = await setup.ask(request)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    lines = setup.upstream[-1].partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert lines[0] == b"GET /simple/ HTTP/1.1"
    assert [x for x in lines if x.lower().startswith(b"host:")] == [b"Host: pypi.org"]
    assert b"Accept: */*" in lines


async def test_unresolvable_names_answer_502_and_are_not_reported(setup: Setup) -> None:
    setup.recorder.table.pop("pypi.org")
    answer = await setup.ask(connect("pypi.org:443"))
    assert answer.startswith(b"HTTP/1.1 502"), answer
    assert setup.recorder.reports == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /relative HTTP/1.1\r\nHost: pypi.org\r\n\r\n",
        b"GET https://pypi.org/ HTTP/1.1\r\n\r\n",
        b"CONNECT pypi.org HTTP/1.1\r\n\r\n",
        b"CONNECT pypi.org:\xb2 HTTP/1.1\r\n\r\n",  # latin-1 superscript two: isdigit(), no int
        b"nonsense\r\n\r\n",
    ],
)
async def test_malformed_requests_answer_400(setup: Setup, request_bytes: bytes) -> None:
    answer = await setup.ask(request_bytes)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert setup.recorder.connected == []


async def test_an_oversized_head_is_refused(setup: Setup) -> None:
    answer = await setup.ask(b"GET http://pypi.org/ HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"bytes" in answer
    assert setup.recorder.connected == []


async def test_denials_are_reported_once_per_target(setup: Setup) -> None:
    for _ in range(3):
        await setup.ask(connect("pypi.invalid:443"))
    await setup.ask(connect("other.invalid:443"))
    assert [r["host"] for r in setup.recorder.reports] == ["pypi.invalid", "other.invalid"]
    assert json.dumps(setup.recorder.reports)  # what the monitor spools is JSON


def test_proxy_env_sends_everything_through_the_sandbox_port() -> None:
    env = egress.proxy_env()
    url = f"http://127.0.0.1:{egress.SANDBOX_PORT}"
    assert env["HTTPS_PROXY"] == env["http_proxy"] == url
    assert env["NO_PROXY"] == env["no_proxy"] == ""


async def test_reported_hosts_are_printable_and_reports_are_capped(setup: Setup) -> None:
    await setup.ask(connect("evil\x1b[31m.invalid:443"))
    assert setup.recorder.reports[0]["host"] == "evil?[31m.invalid"
    proxy = egress_proxy.Proxy(policies.Policy(), setup.recorder.reports.append)
    for i in range(egress_proxy.MAX_REPORTS + 20):
        proxy.deny(f"h{i}.invalid", 443, "not listed")
    assert len(setup.recorder.reports) == 1 + egress_proxy.MAX_REPORTS
    assert "last of" in str(setup.recorder.reports[-1]["reason"])


def test_the_hosts_own_addresses_are_found() -> None:
    # From /proc: loopback is always there (the interfaces' addresses vary by machine).
    found = egress_proxy.local_addresses()
    assert {"127.0.0.1", "::1"} <= found


async def test_connections_over_the_limit_are_refused_not_queued(
    tmp_path: Path, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Queued connections would each hold a socket and memory in the proxy, outside the
    # sandbox's limits, for as long as the agent keeps the tunnels ahead of them open.
    monkeypatch.setattr(egress_proxy, "MAX_CONNECTIONS", 2)
    policy = policies.build_policy(["pypi.org"], model_url=None, remote=None, control=[])
    proxy = egress_proxy.Proxy(
        policy, setup.recorder.reports.append,
        resolve=setup.recorder.resolve, connect=setup.recorder.connect,
    )  # fmt: skip
    path = str(tmp_path / "capped.sock")
    front = await asyncio.start_unix_server(proxy.handle, path, limit=egress_proxy.MAX_HEAD)
    tunnels = []
    for _ in range(2):  # two open tunnels hold both places
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(connect("pypi.org:443"))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        tunnels.append(writer)
    # The answer comes before any request (one sent first could turn the close into a reset).
    reader, writer = await asyncio.open_unix_connection(path)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer, answer
    for writer in tunnels:
        writer.close()
        await writer.wait_closed()
    front.close()
    await front.wait_closed()
