"""Who is asking: API tokens, browser sessions and (opt-in) a forward-auth proxy.

Every request is resolved to a ``Principal`` once (cached on ``request.state``):

1. ``Authorization: Bearer``: the primary token (environment or data directory) or a named
   token from the settings page. A wrong bearer token is a wrong token: no fallback.
2. A forward-auth header (``forward_auth_header``), believed only when the TCP peer is one of
   ``trusted_proxies`` and, if ``forward_auth_secret`` is set, the request carries it in
   ``X-Agentfarm-Proxy-Secret``; otherwise it is ignored.
3. The ``af_session`` cookie of a password login.

Cookie- and proxy-authenticated principals carry a CSRF binding: their state-changing
requests must present the matching token (forms: a hidden field; fetch/htmx: a header).

Roles: the primary token is admin; a user is admin or not (``users.is_admin``), and their
sessions and named tokens act with that role, read on every request so that a change applies at
once. A forward-auth user has the role of the account of the same name, if there is one.

Scopes (``domain.scopes``): a principal carries what it may do, a named token's scopes bounded
by its user's role; ``auth.authorize`` compares them with what the request needs.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Request, Response

from agentfarm.domain import models
from agentfarm.domain import scopes as scoping
from agentfarm.settings import Settings
from agentfarm.store.users import Users, digest

SESSION_COOKIE = "af_session"
PRELOGIN_COOKIE = "af_pre"
#: A named token's ``last_used_at`` is written at most this often (one write per request
#: would put every API call through the single writer).
TOUCH_EVERY = timedelta(minutes=1)

_hasher = PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """What an unknown user's password is checked against, so that a login costs the same
    whether or not the name exists. Made on first use: hashing at import would cost every
    `agentfarm` command (and every test that imports the app) an argon2 round."""
    return _hasher.hash("agentfarm-timing-equaliser")


_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
PROXY_SECRET_HEADER = "x-agentfarm-proxy-secret"  # noqa: S105 (a header name)


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: Literal["token", "session", "proxy"]
    #: What CSRF tokens are bound to; ``None`` for bearer tokens (no ambient credentials).
    binding: str | None = None
    admin: bool = False
    #: The account acted for; None for the primary token and proxy users without an account.
    user_id: str | None = None
    #: What it may do: a token's scopes bounded by its user's role (``domain.scopes``).
    scopes: frozenset[scoping.Scope] = frozenset()


# --- passwords -------------------------------------------------------------------------------
async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists (argon2 against a dummy hash)."""

    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


# --- addresses and TLS -----------------------------------------------------------------------
@lru_cache(maxsize=64)
def _networks(
    entries: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def is_trusted(address: str | None, settings: Settings) -> bool:
    if not address or not settings.trusted_proxies:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(tuple(settings.trusted_proxies)))


def peer(request: Request) -> str:
    return request.client.host if request.client else ""


def client_address(request: Request, settings: Settings) -> str:
    """The client's address: the peer, or behind trusted proxies the nearest untrusted hop."""
    address = peer(request)
    if not is_trusted(address, settings):
        return address
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, settings):
            return hop
        address = hop
    return address


def is_https(request: Request, settings: Settings) -> bool:
    if request.url.scheme == "https":
        return True
    if is_trusted(peer(request), settings):
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return proto == "https"
    return False


# --- cookies ---------------------------------------------------------------------------------
def set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    *,
    max_age: int | None,
    samesite: Literal["lax", "strict"] = "lax",
) -> None:
    settings: Settings = request.app.state.settings
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite=samesite,
        secure=is_https(request, settings),
    )


def clear_cookie(response: Response, request: Request, name: str) -> None:
    settings: Settings = request.app.state.settings
    response.delete_cookie(
        name, path="/", httponly=True, samesite="lax", secure=is_https(request, settings)
    )


# --- resolution ------------------------------------------------------------------------------
def users(request: Request) -> Users:
    found: Users = request.app.state.users
    return found


async def authenticate(request: Request) -> Principal | None:
    if hasattr(request.state, "principal"):
        cached: Principal | None = request.state.principal
        return cached
    principal = await _resolve(request)
    request.state.principal = principal
    return principal


async def _resolve(request: Request) -> Principal | None:
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return await _bearer(request, token)
    if forwarded_auth_believed(request, settings):
        # Exactly one copy: with two, a proxy appended its header to one the client sent.
        copies = request.headers.getlist(settings.forward_auth_header or "")
        name = copies[0].strip()[:128] if len(copies) == 1 else ""
        if name:
            account = await users(request).get_user(name)
            return Principal(
                name,
                "proxy",
                f"proxy:{name}",
                admin=account is not None and account.is_admin,
                user_id=account.id if account else None,
                scopes=scoping.role_scopes(account is not None and account.is_admin),
            )
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = await users(request).get_session(cookie)
        if session is not None:
            return Principal(
                session.user_name,
                "session",
                f"session:{digest(cookie)}",
                admin=session.is_admin,
                user_id=session.user_id,
                scopes=scoping.role_scopes(session.is_admin),
            )
    return None


def forward_auth_risk(settings: Settings) -> str | None:
    """Why this forward-auth set-up is unsafe, if it is: a trusted proxy address that local
    processes share (loopback), with no proxy secret to tell the proxy apart."""
    if not settings.forward_auth_header or settings.forward_auth_secret is not None:
        return None
    nets = _networks(tuple(settings.trusted_proxies))
    if any(n.version == lo.version and n.overlaps(lo) for n in nets for lo in _LOOPBACK):
        return (
            "forward auth is believed from loopback without AGENTFARM_FORWARD_AUTH_SECRET: any "
            "process on this host (an agent with an open network, another user) can sign in as "
            "anyone by sending the header; set the secret and have the proxy send it in "
            "X-Agentfarm-Proxy-Secret"
        )
    return None


def forwarded_auth_believed(request: Request, settings: Settings) -> bool:
    """May this request's forward-auth header name the user? A trusted peer, with the secret."""
    if not settings.forward_auth_header or not is_trusted(peer(request), settings):
        return False
    if settings.forward_auth_secret is None:
        return True
    presented = request.headers.get(PROXY_SECRET_HEADER, "")
    expected = settings.forward_auth_secret.get_secret_value()
    return bool(presented) and hmac.compare_digest(presented.encode(), expected.encode())


async def _bearer(request: Request, token: str) -> Principal | None:
    primary: str = request.app.state.api_token
    if hmac.compare_digest(token.encode(), primary.encode()):
        return Principal("api-token", "token", admin=True, scopes=scoping.ALL)
    found = await users(request).find_token(token)  # None when unknown or expired
    if found is None:
        return None
    now = models.utcnow()
    if found.last_used_at is None or now - found.last_used_at > TOUCH_EVERY:
        await users(request).touch_token(found.id)
    return Principal(
        f"token:{found.name}",
        "token",
        admin=found.user_is_admin,
        user_id=found.user_id,
        scopes=scoping.closure(found.scopes) & scoping.role_scopes(found.user_is_admin),
    )
