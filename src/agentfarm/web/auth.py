"""Authentication of API requests: bearer tokens (primary or named), browser sessions and a
trusted forward-auth proxy (see ``identity``). Requests a browser makes with its cookies must
also carry the CSRF token when they change something.

Authorization is one check, :func:`authorize`, made by every guard here and by the cockpit's
page dependencies: the scope the request needs (``domain.scopes.required``) must be among the
principal's."""

from __future__ import annotations

from fastapi import HTTPException, Request, status

from agentfarm.domain import scopes as scoping
from agentfarm.web import csrf, identity


def _unauthorized() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing, wrong or expired API token: send `Authorization: Bearer <token>` "
        "(`agentfarm token` prints the server's own)",
        headers={"WWW-Authenticate": "Bearer"},
    )


_WHAT = {
    "read": "reading",
    "operate": "launching, stopping, messaging and dispatching runs",
    "admin": "users, secrets, config changes and forges",
}


def authorize(request: Request, principal: identity.Principal) -> None:
    """403 unless ``principal`` has the scope this request needs, naming the missing scope."""
    needed = scoping.required(request.method, request.url.path)
    if needed in principal.scopes:
        return
    has = scoping.dump(principal.scopes) or "none"
    if principal.kind == "token" and needed in scoping.role_scopes(principal.admin):
        advice = (
            f"this API token has the scopes {has}; create one with the `{needed}` scope "
            f"(`agentfarm user token create NAME --scope {needed}`, or the settings page)"
        )
    else:
        advice = f"{principal.name} may do {has} only; ask an admin"
    raise HTTPException(
        status_code=status.HTTP_403_FORBIDDEN,
        detail=f"missing scope `{needed}` ({_WHAT[needed]} needs it): {advice}",
    )


async def check_bearer(request: Request) -> identity.Principal:
    """The API's guard: any principal with the scope the request needs; CSRF-checked when it
    rode in on ambient credentials."""
    principal = await identity.authenticate(request)
    if principal is None:
        raise _unauthorized()
    authorize(request, principal)
    if principal.binding is not None and request.method not in csrf.SAFE_METHODS:
        key: bytes = request.app.state.web_key
        if not csrf.valid(key, principal.binding, request.headers.get(csrf.HEADER)):
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail="missing or wrong CSRF token (send the page's X-CSRF-Token header)",
            )
    return principal


async def require_admin_token(request: Request) -> identity.Principal:
    """Administration (users): an admin's bearer token (or the primary one), never a browser
    session. A token acts with its user's role, so a non-admin's token is refused too."""
    principal = await identity.authenticate(request)
    if principal is None:
        raise _unauthorized()
    authorize(request, principal)
    if principal.kind != "token" or not principal.admin:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="user administration needs an admin's API token (`agentfarm token` prints "
            "the server's own; an admin creates tokens on the cockpit's settings page)",
        )
    return principal
