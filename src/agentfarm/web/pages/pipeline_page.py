"""The pipeline page: the kill switch (htmx, or a plain form), the attempts at issues with
their runs and pull requests, retry for ended ones and stop for active ones, and the issues
seen. Titles, reasons and URLs come from forges: shown as text, linked only when http(s)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from agentfarm.domain import errors
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import admin
from agentfarm.store.pipeline import PipelineStore
from agentfarm.web import api_forges, csrf, identity
from agentfarm.web.pages import access, forms, templating

router = APIRouter(include_in_schema=False)

#: ``api_forges.retry_attempt`` or ``api_forges.stop_attempt``.
AttemptAction = Callable[[Request, str, PipelineStore], Awaitable[domain.Attempt]]

STATE_CLASS = {
    "pending": "badge-neutral",
    "waiting": "badge-neutral",
    "running": "badge-info",
    "finishing": "badge-info",
    "opening_pr": "badge-info",
    "done": "badge-success",
    "failed": "badge-error",
    "stopped": "badge-warning",
    "ignored": "badge-neutral",
}


def link(url: str) -> str | None:
    """``url`` when it is safe to put in an href (http or https), else None."""
    return url if url.startswith(("https://", "http://")) else None


def _switch_context(request: Request, who: identity.Principal, paused: bool) -> dict[str, object]:
    token = csrf.token_for(access.web_key(request), who.binding) if who.binding else ""
    return {"paused": paused, "csrf_token": token, "csrf_field": csrf.FIELD}


async def _page(
    request: Request,
    who: identity.Principal,
    status_code: int = 200,
    problem: str | None = None,
    template: str = "pipeline.html",
) -> HTMLResponse:
    ps = api_forges.pipeline_store(request)
    forges = {f.id: f for f in await ps.list_forges()}
    attempts = await ps.list_attempts(limit=200)
    issues = await ps.list_tracked_issues(limit=200)

    def issue_url(item: domain.Attempt | domain.TrackedIssue) -> str | None:
        forge = forges.get(item.forge_id)
        return admin.issue_url(forge, item.repo, item.number) if forge else None

    return templating.page(
        request, template, who, status_code, forges=forges, attempts=attempts,
        issues=issues, paused=await api_forges.is_paused(request, ps), state_class=STATE_CLASS,
        issue_url=issue_url, link=link, problem=problem,
    )  # fmt: skip


@router.get("/pipeline")
async def pipeline(request: Request, who: access.Viewer) -> Response:
    return await _page(request, who)


@router.get("/pipeline/attempts")
async def pipeline_attempts(request: Request, who: access.Viewer) -> Response:
    """The attempts list alone: the page refreshes it (htmx) while it is open."""
    return await _page(request, who, template="_attempts.html")


@router.post("/pipeline/pause")
async def pipeline_pause(request: Request, who: access.Checked) -> Response:
    """The kill switch. ``paused=1`` pauses, anything else resumes."""
    values = await forms.read(request)
    ps = api_forges.pipeline_store(request)
    paused = await api_forges.set_paused(request, ps, values.get("paused") == "1")
    if request.headers.get("hx-request"):
        html = templating.fragment("_kill_switch.html", **_switch_context(request, who, paused))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})
    return templating.see_other("/pipeline")


@router.post("/pipeline/attempts/{attempt_id}/retry")
async def attempt_retry(
    request: Request, who: access.Checked, attempt_id: api_forges.AttemptId
) -> Response:
    return await _on_attempt(request, who, attempt_id, api_forges.retry_attempt)


@router.post("/pipeline/attempts/{attempt_id}/stop")
async def attempt_stop(
    request: Request, who: access.Checked, attempt_id: api_forges.AttemptId
) -> Response:
    return await _on_attempt(request, who, attempt_id, api_forges.stop_attempt)


async def _on_attempt(
    request: Request, who: access.Checked, attempt_id: str, action: AttemptAction
) -> Response:
    """Retries or stops an attempt (``action``); back to the page, or the page with the 409."""
    try:
        await action(request, attempt_id, api_forges.pipeline_store(request))
    except (errors.ConflictError, errors.ConfigurationError) as exc:
        return await _page(request, who, 409, problem=str(exc))
    return templating.see_other("/pipeline")
