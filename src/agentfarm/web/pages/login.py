"""Signing in and out with a password. The login form carries a CSRF token bound to a
pre-login cookie, so that another site cannot sign a browser in to an account of its choice."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from agentfarm.settings import Settings
from agentfarm.web import csrf, identity, loginlimit
from agentfarm.web.pages import access, templating

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    if await identity.authenticate(request) is not None:
        return templating.see_other(templating.safe_next(next))
    return _login_page(request, next)


def _login_page(
    request: Request, next: str | None, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    nonce = request.cookies.get(identity.PRELOGIN_COOKIE) or identity.new_secret()
    response = templating.templates.TemplateResponse(
        request,
        "login.html",
        {
            "who": None,
            "next": templating.safe_next(next),
            "error": error,
            "csrf_field": csrf.FIELD,
            "csrf_token": csrf.token_for(access.web_key(request), f"pre:{nonce}"),
        },
        status_code=status_code,
    )
    response.headers["Cache-Control"] = "no-store"
    identity.set_cookie(
        response, request, identity.PRELOGIN_COOKIE, nonce, max_age=3600, samesite="strict"
    )
    return response


@router.post("/login")
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=128)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(alias=csrf.FIELD)] = "",
    next: Annotated[str | None, Form()] = None,
) -> Response:
    nonce = request.cookies.get(identity.PRELOGIN_COOKIE, "")
    if not csrf.valid(access.web_key(request), f"pre:{nonce}", csrf_token):
        return _login_page(request, next, "The form expired; please try again.", 403)
    settings: Settings = request.app.state.settings
    limiter: loginlimit.LoginLimiter = request.app.state.login_limiter
    address = identity.client_address(request, settings)
    wait = limiter.retry_after(username, address)
    if wait:
        limited = _login_page(
            request, next, f"Too many failed logins; try again in {int(wait) + 1} s.", 429
        )
        limited.headers["Retry-After"] = str(int(wait) + 1)
        return limited
    store = identity.users(request)
    user = await store.get_user(username)
    ok = await identity.verify_password(user.password_hash if user else None, password)
    if user is None or not ok:
        limiter.failed(username, address)
        log.warning("failed cockpit login for %r from %s", username[:64], address)
        return _login_page(request, next, "Wrong user name or password.", 401)
    limiter.succeeded(username)
    secret = identity.new_secret()
    hours = settings.session_hours
    await store.create_session(user, secret, timedelta(hours=hours))
    response = templating.see_other(templating.safe_next(next))
    identity.set_cookie(
        response, request, identity.SESSION_COOKIE, secret, max_age=int(hours * 3600)
    )
    identity.clear_cookie(response, request, identity.PRELOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, who: access.Checked) -> Response:
    cookie = request.cookies.get(identity.SESSION_COOKIE)
    if cookie:
        await identity.users(request).delete_session(cookie)
    response = templating.see_other("/login")
    identity.clear_cookie(response, request, identity.SESSION_COOKIE)
    return response
