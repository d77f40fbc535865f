"""The settings page: named API tokens (create, shown once; revoke), notifications (the
targets, a test; Web Push for this browser) and the data directory's disk use."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from agentfarm.domain import errors, models
from agentfarm.domain import scopes as scoping
from agentfarm.settings import Settings
from agentfarm.store.users import ApiToken
from agentfarm.supervisor import retention
from agentfarm.web import identity, ids, notifications
from agentfarm.web import tokens as token_api
from agentfarm.web.pages import access, forms, templating

#: Lifetimes offered when creating a token (days; 0: it does not expire).
TOKEN_DAYS = (0, 7, 30, 90, 365)

router = APIRouter(include_in_schema=False)


async def _visible_tokens(request: Request, who: identity.Principal) -> list[ApiToken]:
    """Admins see every token; other users their own (nobody else's names or use)."""
    store = identity.users(request)
    if who.admin:
        return await store.list_tokens()
    return await store.list_tokens(who.user_id) if who.user_id else []


def _settings_page(
    request: Request,
    who: identity.Principal,
    tokens: list[ApiToken],
    status_code: int = 200,
    new_token: tuple[str, str] | None = None,
    problem: str | None = None,
    **extra: Any,
) -> HTMLResponse:
    return templating.page(
        request, "settings.html", who, status_code, tokens=tokens, new_token=new_token,
        problem=problem, token_days=TOKEN_DAYS, now=models.utcnow(),
        token_scopes=_offered(who), **extra,
    )  # fmt: skip


def _offered(who: identity.Principal) -> list[scoping.Scope]:
    """The scopes a token made here may have, highest first."""
    return [s for s in reversed(scoping.ORDER) if s in who.scopes]


async def _disk_use(request: Request) -> retention.DiskUse:
    cache: retention.DiskUseCache | None = getattr(request.app.state, "disk_use", None)
    if cache is None:
        settings: Settings = request.app.state.settings
        cache = request.app.state.disk_use = retention.DiskUseCache(
            settings.data_dir, settings.runs_dir
        )
    return await cache.get()


@router.get("/settings")
async def settings_page(request: Request, who: access.Viewer) -> Response:
    settings: Settings = request.app.state.settings
    return _settings_page(
        request,
        who,
        await _visible_tokens(request, who),
        disk=await _disk_use(request),
        data_dir=settings.data_dir,
        retention_hours=settings.retention_hours,
        notify=await notifications.overview(request),
    )


@router.post("/settings/notifications/test")
async def notification_test(request: Request, who: access.Checked) -> Response:
    """The "send a test" button (the admin scope, see ``domain.scopes``): htmx swaps in the
    outcome; without script, the whole page comes back with it."""
    result = await notifications.send_test(request, who)
    if request.headers.get("hx-request"):
        html = templating.fragment("_notify_result.html", result=result)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})
    settings: Settings = request.app.state.settings
    return _settings_page(
        request, who, await _visible_tokens(request, who), disk=await _disk_use(request),
        data_dir=settings.data_dir, retention_hours=settings.retention_hours,
        notify=await notifications.overview(request), notify_result=result,
    )  # fmt: skip


@router.post("/settings/tokens")
async def token_create(request: Request, who: access.Checked) -> Response:
    values = await forms.read(request)
    name = values.get("name", "").strip()
    days = values.get("expires_days", "0").strip() or "0"
    scope = values.get("scope", "").strip()  # none: all the role allows (see tokens.grant)
    store = identity.users(request)
    owner = await store.get_user_by_id(who.user_id) if who.user_id else None
    problem = None
    if not name or len(name) > 64:
        problem = "give the token a name (up to 64 characters)"
    elif not days.isdigit() or int(days) not in TOKEN_DAYS:
        problem = f"choose a lifetime of {', '.join(map(str, TOKEN_DAYS[1:]))} days, or none"
    elif scope and scope not in _offered(who):
        problem = f"choose the token's scope among {', '.join(_offered(who))}"
    elif owner is None:
        # A token acts as its user: the primary token and accountless proxy users have none.
        problem = "API tokens belong to a cockpit user: sign in with a user account to create one"
    if problem is not None or owner is None:
        tokens = await _visible_tokens(request, who)
        return _settings_page(request, who, tokens, 422, problem=problem)
    expires = models.utcnow() + timedelta(days=int(days)) if int(days) else None
    secret = "afn_" + identity.new_secret()
    granted = token_api.grant(who, owner, [s for s in scoping.ORDER if s == scope] or None)
    await store.create_token(
        name, secret, owner, created_by=who.name, expires_at=expires, granted=granted
    )
    # Shown once, in this response only; the store keeps its hash.
    tokens = await _visible_tokens(request, who)
    return _settings_page(request, who, tokens, new_token=(name, secret))


@router.post("/settings/tokens/{token_id}/revoke")
async def token_revoke(request: Request, who: access.Checked, token_id: str) -> Response:
    # Admins revoke any token; others only their own (someone else's is "not found").
    if not who.admin and who.user_id is None:
        raise errors.NotFoundError(f"no API token with id {ids.shown(token_id)}")
    await identity.users(request).revoke_token(token_id, None if who.admin else who.user_id)
    return templating.see_other("/settings")
