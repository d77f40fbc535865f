"""The Host-header allow-list, against DNS rebinding (pure ASGI middleware).

A page on ``evil.example`` whose name is re-pointed at 127.0.0.1 makes the victim's browser
talk to this server as if it were ``evil.example``: same origin for the browser, so it may read
the answers. The browser still sends ``Host: evil.example``; refusing names we do not know ends
the attack. Accepted without configuration: loopback names (``localhost``, ``*.localhost``), IP
address literals (a browser sends an address only for a page loaded from that address, so no
other origin can rebind to it; this also admits kubelet probes and plain LAN access), and the
host of ``public_url``. ``allowed_hosts`` adds names; ``*`` turns the check off.
"""

from __future__ import annotations

import ipaddress
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from agentfarm.settings import Settings

SETTING_HINT = "AGENTFARM_PUBLIC_URL or AGENTFARM_ALLOWED_HOSTS"


def host_name(header: str) -> str:
    """The name in a Host header: lowercased, without port, brackets or a trailing dot."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostAllowList:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        names = {"localhost", *settings.allowed_hosts}
        if settings.public_host:
            names.add(settings.public_host.rstrip("."))
        self.any = "*" in names
        self.names = frozenset(names - {"*"})

    def allowed(self, name: str) -> bool:
        if self.any or name in self.names or name.endswith(".localhost"):
            return True
        return is_address(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.any:
            await self.app(scope, receive, send)
            return
        header = next(
            (v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None
        )
        name = None if header is None else host_name(header)
        if name is not None and self.allowed(name):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        elif name is None:
            await _reject(send, 400, "host_missing", "the request has no Host header: send one")
        else:
            await _reject(
                send,
                421,
                "host_not_allowed",
                f"this server does not answer to the host name {name[:100]!r}: if that is its "
                f"name, add it to {SETTING_HINT}",
            )


async def _reject(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
