"""Bearer-token authentication for the API (on by default, always on beyond loopback)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status


def check_bearer(request: Request) -> None:
    expected: str = request.app.state.api_token
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token and hmac.compare_digest(token.strip(), expected):
        return
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or wrong API token: send `Authorization: Bearer <token>` "
        "(`agentfarm token` prints it)",
        headers={"WWW-Authenticate": "Bearer"},
    )
