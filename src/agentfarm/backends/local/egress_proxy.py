"""The per-run egress proxy: the only way out of a sandbox with ``network: allowlist``.

This module runs in the proxy process only (it imports asyncio, which the monitor avoids).

The sandbox has its own network namespace with nothing but ``lo``. Its HTTP(S)_PROXY points
at a loopback port there, which this proxy serves from outside the sandbox, as a child of the
run's monitor (``egress.py`` says how the port reaches it); the agent cannot touch it.

It speaks just enough HTTP proxy: ``CONNECT host:port`` opens a tunnel (any protocol), and an
absolute-form request (``GET http://host:port/path``) is forwarded in origin form with
``Connection: close`` and the target's own ``Host``. Every request is checked against the
run's policy (see :mod:`agentfarm.domain.egress`) before any DNS look-up; then the name is
resolved, every address is checked, and the connection goes to an address that passed, so a
name that resolves differently a moment later (DNS rebinding) changes nothing. Denials are
reported to the monitor, which turns them into ``sandbox.egress_denied`` events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401 (imported lazily by the loop's executor)
import contextlib
import encodings.idna  # noqa: F401 (getaddrinfo encodes names with it)
import ipaddress
import itertools
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from agentfarm.backends.local import egress as local_egress
from agentfarm.domain import egress

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 15.0
MAX_CONNECTIONS = 256
#: Distinct refusals reported per run (the last one says so).
MAX_REPORTS = 100
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"te", b"upgrade"}
)

Resolver = Callable[[str, int], Awaitable[list[str]]]
Connector = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
Reporter = Callable[[dict[str, object]], None]


class Denied(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Request:
    method: str
    host: str
    port: int
    #: For a forwarded request: the head to send upstream (origin form, Connection: close).
    head: bytes = b""


async def resolve_host(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def open_tcp(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(address, port)


def parse_head(head: bytes) -> Request:
    """The request line and headers of a proxy request; raises Denied(400) if malformed."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise Denied(400, "not an HTTP/1.x proxy request")
    method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
    if method == "CONNECT":
        host, sep, port_text = target.rpartition(":")
        # isascii: str.isdigit() also says yes to "²", which int() refuses.
        if not sep or not (port_text.isascii() and port_text.isdigit()):
            raise Denied(400, "CONNECT needs host:port")
        return Request(method, host.strip("[]"), int(port_text))
    try:
        url = urlsplit(target)
        port = url.port or egress.SCHEME_PORTS.get(url.scheme.lower(), 0)
    except ValueError:
        raise Denied(400, "the request target is not a valid URL") from None
    if url.scheme.lower() != "http" or not url.hostname:
        raise Denied(400, "only CONNECT and absolute http:// requests go through this proxy")
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    # RFC 9112 3.2.2: the target's host replaces any Host the client sent, which would
    # otherwise pick another site behind the checked one's address (a CDN's, say).
    authority = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    if url.port is not None:
        authority += f":{url.port}"
    out = [f"{method} {path} HTTP/1.1".encode("latin-1"), f"Host: {authority}".encode("latin-1")]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if line and name not in HOP_BY_HOP and name != b"host":
            out.append(line)
    out.append(b"Connection: close")
    return Request(method, url.hostname, port, b"\r\n".join(out) + b"\r\n\r\n")


def close_response(head: bytes) -> bytes:
    """A response head without hop-by-hop connection headers, saying ``Connection: close``."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name not in (b"connection", b"keep-alive", b"proxy-connection"):
            kept.append(line)
    return b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n"


def response(status: int, reason: str) -> bytes:
    titles = {
        400: "Bad Request",
        403: "Forbidden",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
    body = f"agentfarm egress proxy: {reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {titles.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Proxy:
    def __init__(
        self,
        policy: egress.Policy,
        report: Reporter,
        *,
        resolve: Resolver = resolve_host,
        connect: Connector = open_tcp,
    ) -> None:
        self.policy = policy
        self.report = report
        self.resolve = resolve
        self.connect = connect
        #: Connections being served; one over :data:`MAX_CONNECTIONS` is refused at once
        #: (queued, each would hold a socket and memory here, outside the sandbox's limits).
        self.active = 0
        self.reported: set[tuple[str, int, str]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            if self.active > MAX_CONNECTIONS:
                limit = f"too many connections (at most {MAX_CONNECTIONS} at a time)"
                writer.write(response(503, limit))
                return
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            writer.write(response(400, f"the request head is over {MAX_HEAD} bytes"))
            return
        except TimeoutError:
            return
        try:
            request = parse_head(head[:-4])
            upstream = await self.open(request)
        except Denied as exc:
            writer.write(response(exc.status, exc.reason))
            await writer.drain()
            return
        up_reader, up_writer = upstream
        try:
            if request.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                up_writer.write(request.head)
                await up_writer.drain()
            await _splice(reader, writer, up_reader, up_writer, request.method != "CONNECT")
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()

    async def open(self, request: Request) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Check, resolve, check every address, connect to a checked one (or raise Denied)."""
        host, port = request.host, request.port
        reason = egress.check_target(self.policy, host, port)
        if reason is not None:
            raise self.deny(host, port, reason)
        name = egress.normalize_host(host) or host
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                addresses = [name] if _is_ip(name) else await self.resolve(name, port)
        except (OSError, TimeoutError) as exc:
            raise Denied(502, f"cannot resolve {name}: {exc}") from None
        if not addresses:
            raise Denied(502, f"{name} has no address")
        for address in addresses:
            reason = egress.check_address(self.policy, name, port, address)
            if reason is not None:
                raise self.deny(host, port, reason)
        last: BaseException | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    return await self.connect(address, port)
            except (OSError, TimeoutError) as exc:
                last = exc
        raise Denied(502, f"cannot connect to {name}:{port}: {last}")

    def deny(self, host: str, port: int, reason: str) -> Denied:
        """Report a refusal (once per target and reason, up to :data:`MAX_REPORTS`)."""
        # The agent chose the host: only printable ASCII goes into events and terminals.
        shown = "".join(c if c.isascii() and c.isprintable() else "?" for c in host[:255])
        key = (shown, port, reason)
        if key not in self.reported and len(self.reported) < MAX_REPORTS:
            self.reported.add(key)
            if len(self.reported) == MAX_REPORTS:
                reason += f" (the last of {MAX_REPORTS} refusals reported for this run)"
            self.report({"host": shown, "port": port, "reason": reason})
        return Denied(403, f"{shown}:{port} refused: {reason}")


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    forwarded: bool = False,
) -> None:
    """Copy both ways until the upstream side is done (a half-close is passed on). For a
    forwarded request the response head says ``Connection: close``, since it is true."""
    outgoing = asyncio.ensure_future(_copy(reader, up_writer))
    try:
        if forwarded:
            try:
                head = await up_reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                head = exc.partial
            except asyncio.LimitOverrunError:
                head = b""  # an oversized head passes through unchanged below
            writer.write(close_response(head) if head.endswith(b"\r\n\r\n") else head)
        await _copy(up_reader, writer)
    finally:
        outgoing.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await outgoing


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


def _is_ip(host: str) -> bool:
    return egress._ip(host) is not None


def local_addresses() -> frozenset[str]:
    """This host's own addresses (IPv4 from the local routing table, IPv6 per interface)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for previous, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                found.add(previous.split()[-1])
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    return frozenset(found)


# --- the proxy process (forked by the monitor) ----------------------------------------------
def serve_prepared(channel: socket.socket, ready: Callable[[], None] = lambda: None) -> None:
    """The body of the proxy process (``egress.fork_proxy``): warm up, call ``ready``, wait on
    ``channel`` for the run (``egress.hand_over``), then serve until killed (the monitor kills
    it at the end). Returns, serving nothing, if ``channel`` closes first.

    ``ready`` runs once everything is imported and the resolver thread is warm, before anything
    of the run arrives (the caller drops its privileges there: nothing needs importing or
    opening as root after that, and nothing from the agent is read before it).
    """
    with asyncio.Runner() as runner:
        runner.run(resolve_host("127.0.0.1", 80))  # starts the executor thread, loads the codecs
        ready()
        handover = local_egress.receive_handover(channel)
        if handover is None:
            return  # the monitor's run does not need us, or it got none
        os.dup2(handover.log_fd, 2)
        os.close(handover.log_fd)
        listener = handover.listener or local_egress.receive_listener(channel)
        channel.close()
        if listener is None:
            return  # the agent never started
        policy = egress.Policy.from_json(handover.policy)
        runner.run(serve(listener, policy, handover.report_fd))


async def serve(listener: socket.socket, policy: egress.Policy, report_fd: int) -> None:
    """Serve ``listener`` with ``policy``, reporting each denial as a JSON line on
    ``report_fd``, until cancelled."""
    os.set_blocking(report_fd, False)

    def report(body: dict[str, object]) -> None:
        # Never block the proxy on a slow monitor: a denial that does not fit is dropped.
        with contextlib.suppress(OSError):
            os.write(report_fd, json.dumps(body).encode() + b"\n")

    proxy = Proxy(replace(policy, local_addresses=local_addresses()), report)
    listener.setblocking(False)
    server = await asyncio.start_server(proxy.handle, sock=listener, limit=MAX_HEAD)
    async with server:
        await server.serve_forever()
