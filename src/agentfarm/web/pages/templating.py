"""Pages from templates: the Jinja environment with its helpers, and the page response."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from agentfarm import __version__
from agentfarm.domain import models
from agentfarm.domain.present import fmt_bytes, fmt_cost, fmt_duration
from agentfarm.web import csrf, event_html, identity
from agentfarm.web.pages import access

WEB = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=WEB / "templates")


def elapsed(run: models.Run) -> float | None:
    if run.started_at is None:
        return None
    end = run.finished_at or models.utcnow()
    return (end - run.started_at).total_seconds()


def _tokens(run: models.Run) -> int:
    return run.usage.total


templates.env.globals.update(
    badge=event_html.badge,
    run_badge=event_html.run_badge,
    fmt_cost=fmt_cost,
    fmt_bytes=fmt_bytes,
    version=__version__,
    elapsed=lambda r: fmt_duration(elapsed(r)),
    tokens=_tokens,
)


def page(
    request: Request,
    name: str,
    who: identity.Principal | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    key = access.web_key(request)
    token = csrf.token_for(key, who.binding) if who and who.binding else ""
    context.update(request=request, who=who, csrf_token=token, csrf_field=csrf.FIELD)
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


def fragment(name: str, **context: Any) -> str:
    """A template's HTML without a response around it (SSE data, htmx partials)."""
    return templates.get_template(name).render(**context)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this site, never another host."""
    if not value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return "/"
    return value
