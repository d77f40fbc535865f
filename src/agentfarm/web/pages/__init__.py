"""The cockpit: server-rendered pages (Jinja2 + htmx) over the same store and supervisor as
the API. Forms work without JavaScript; htmx and a small script add live updates.

One module per concern: ``login``, ``dashboard``, ``configs`` (with ``forms``), ``runs``,
``pipeline_page``, ``forges_page`` (with ``forge_forms``), ``settings_page``; ``access`` holds
the page dependencies (signed in; CSRF), ``templating`` the page response, ``shell`` the
manifest, static files and security headers, ``appstate`` the per-app state made at start-up.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from agentfarm.web import admin
from agentfarm.web import errors as web_errors
from agentfarm.web.pages import (
    access,
    appstate,
    configs,
    dashboard,
    forges_page,
    login,
    pipeline_page,
    runs,
    settings_page,
    shell,
    templating,
)

__all__ = ["appstate", "install"]


def install(app: FastAPI) -> None:
    """Add the cockpit to an app: pages, static files, user admin, and its error handlers."""

    @app.exception_handler(access.LoginRequiredError)
    async def _login(request: Request, _: access.LoginRequiredError) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        url = f"/login?next={quote(target)}"
        if request.headers.get("hx-request") or request.headers.get("accept", "").startswith(
            "text/event-stream"
        ):
            # A script's request: the error shape, and htmx goes to the login page.
            body = web_errors.error_body("unauthorized", "sign in first (the cookie expired?)")
            return JSONResponse(body, status_code=401, headers={"HX-Redirect": url})
        return templating.see_other(url)

    @app.exception_handler(access.CsrfError)
    async def _csrf(request: Request, _: access.CsrfError) -> Response:
        return HTMLResponse(
            "<!doctype html><title>Forbidden</title><p>This form is stale or was not sent by "
            'the cockpit (CSRF token missing or wrong). <a href="/">Reload</a> and try again.',
            status_code=403,
        )

    for module in (
        login,
        dashboard,
        configs,
        runs,
        pipeline_page,
        forges_page,
        settings_page,
        shell,
    ):
        app.include_router(module.router)
    app.include_router(admin.router)
    shell.install(app)
