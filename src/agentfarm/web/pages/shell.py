"""The app shell: the web manifest (installable on a phone), the static files, the browser
assets the pages need, and the security headers every page carries."""

from __future__ import annotations

import json

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentfarm.domain import errors
from agentfarm.web.pages import templating

STATIC = templating.WEB / "static"
VENDOR = STATIC / "vendor"
VENDORED = ("htmx.min.js", "htmx-ext-sse.min.js")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


@router.get("/manifest.webmanifest")
async def manifest() -> Response:
    body = {
        "name": "agentfarm",
        "short_name": "agentfarm",
        "start_url": "/",
        "scope": "/",
        "display": "standalone",
        "background_color": "#0f172a",
        "theme_color": "#0f172a",
        "icons": [
            {"src": "/static/icon-192.png", "sizes": "192x192", "type": "image/png"},
            {"src": "/static/icon-512.png", "sizes": "512x512", "type": "image/png"},
            {"src": "/static/icon.svg", "sizes": "any", "type": "image/svg+xml"},
            {"src": "/static/icon-maskable-512.png", "sizes": "512x512", "type": "image/png",
             "purpose": "maskable"},
        ],
    }  # fmt: skip
    return Response(json.dumps(body), media_type="application/manifest+json")


@router.get("/sw.js")
async def service_worker() -> Response:
    """The service worker, from the site's root so that its scope is the whole cockpit."""
    return FileResponse(
        STATIC / "sw.js",
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def check_assets() -> None:
    """The vendored scripts are fetched at install time, not kept in git: say how to get them."""
    missing = [name for name in VENDORED if not (VENDOR / name).is_file()]
    if missing:
        raise errors.ConfigurationError(
            f"the cockpit's browser assets are missing from {VENDOR} ({', '.join(missing)}): "
            "run `make install` (it fetches them from the npm registry with "
            "scripts/build-web-vendor.sh)"
        )


class SecurityHeaders:
    """Security headers on every HTML response. Plain ASGI: it only looks at the response's
    start, so a long stream's messages pass straight through (an ``@app.middleware("http")``
    relayed each of them through a memory stream and a task of its own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", CSP)
                    headers.setdefault("X-Content-Type-Options", "nosniff")
                    headers.setdefault("Referrer-Policy", "same-origin")
            await send(message)

        await self.app(scope, receive, headed)


def install(app: FastAPI) -> None:
    """Security headers on every HTML response, and the static files."""
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
