"""Authentication of API requests: bearer tokens (primary or named), browser sessions and a
trusted forward-auth proxy (see ``identity``). Requests a browser makes with its cookies must
also carry the CSRF token when they change something."""

from __future__ import annotations

from fastapi import HTTPException, Request, status

from agentfarm.web import csrf, identity


def _unauthorized() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing, wrong or expired API token: send `Authorization: Bearer <token>` "
        "(`agentfarm token` prints the server's own)",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def check_bearer(request: Request) -> identity.Principal:
    """The API's guard: any principal; CSRF-checked when it rode in on ambient credentials."""
    principal = await identity.authenticate(request)
    if principal is None:
        raise _unauthorized()
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
    if principal.kind != "token" or not principal.admin:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="user administration needs an admin's API token (`agentfarm token` prints "
            "the server's own; an admin creates tokens on the cockpit's settings page)",
        )
    return principal
