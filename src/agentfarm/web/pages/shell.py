"""The app shell: the web manifest (installable on a phone), the static files, the browser
assets the pages need, and the security headers every page carries."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

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


def install(app: FastAPI) -> None:
    """Security headers on every HTML response, and the static files."""

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
