"""What a request may do: the scopes of API tokens, bounded by their user's role.

Three scopes, each including the ones below it: ``read`` (GET requests and live streams),
``operate`` (launch, stop, send, dispatch, pause, retry) and ``admin`` (users, secrets, config
writes, forges, test notifications). A token stores a set of them; what a request may do is
that set bounded by what its user's role allows (an admin: all three; anyone else: ``read`` and
``operate``). The primary token and admins' sessions have every scope.

Which scope a request needs is decided here, from its method and path, so that one check in
the web layer covers every route, including routes added later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal, get_args

Scope = Literal["read", "operate", "admin"]
#: Lowest first: a scope includes every scope before it.
ORDER: tuple[Scope, ...] = get_args(Scope)
ALL: frozenset[Scope] = frozenset(ORDER)
#: What a user who is not an admin may do (and so grant their tokens).
USER_ROLE: frozenset[Scope] = frozenset({"read", "operate"})

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Paths whose every request is administration (prefix match at a path boundary).
_ADMIN_ALWAYS = (
    "/api/admin", "/api/secrets", "/api/forges", "/forges",
    # a test notification: it reaches every target, people's phones included
    "/api/notifications/test", "/settings/notifications/test",
)  # fmt: skip
#: Paths whose writes are administration: configs (the API's and the cockpit's forms).
_ADMIN_WRITES = re.compile(r"^(/api/configs(/.*)?|/configs/new|/configs/[^/]+/(edit|delete))$")


def role_scopes(admin: bool) -> frozenset[Scope]:
    return ALL if admin else USER_ROLE


def closure(scopes: Iterable[str]) -> frozenset[Scope]:
    """``scopes`` with every scope they include (``operate`` brings ``read``); unknown names
    raise ValueError saying which are known."""
    names = set(scopes)
    unknown = sorted(names.difference(ORDER))
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}: choose from {', '.join(ORDER)}")
    top = max((ORDER.index(s) for s in ORDER if s in names), default=-1)
    return frozenset(ORDER[: top + 1])


def parse(stored: str) -> frozenset[Scope]:
    """The stored, comma-separated form; names this version does not know are ignored (a
    token never gains a scope from a typo)."""
    names = {part.strip() for part in stored.split(",")}
    return frozenset(s for s in ORDER if s in names)


def dump(scopes: Iterable[Scope]) -> str:
    chosen = set(scopes)
    return ",".join(s for s in ORDER if s in chosen)


def highest(scopes: Iterable[Scope]) -> Scope | None:
    chosen = set(scopes)
    return next((s for s in reversed(ORDER) if s in chosen), None)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def required(method: str, path: str) -> Scope:
    """The scope a request needs: admin paths, then reads, then everything else operates."""
    if any(_under(path, prefix) for prefix in _ADMIN_ALWAYS):
        return "admin"
    if method.upper() in SAFE_METHODS:
        return "read"
    if _ADMIN_WRITES.match(path):
        return "admin"
    return "operate"
