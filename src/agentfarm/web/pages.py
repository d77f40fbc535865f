"""The cockpit: server-rendered pages (Jinja2 + htmx) over the same store and supervisor as
the API. Forms work without JavaScript; htmx and a small script add live updates.

Live views are Server-Sent Events. The dashboard re-renders its run list when the runs change
(one store poll per second per viewer; only changes are sent). A run page streams rendered
event batches, each with the last seq as its SSE id, and resumes with ``?after=`` or
``Last-Event-ID`` after a drop; the page drops anything at or below the last seq it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import pydantic
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sse_starlette import EventSourceResponse

from agentfarm import __version__
from agentfarm.domain import backend_config, errors, models
from agentfarm.domain.present import fmt_bytes, fmt_cost, fmt_duration
from agentfarm.settings import Settings, read_or_create_token
from agentfarm.store import Store
from agentfarm.store.users import ApiToken, Users
from agentfarm.supervisor import retention
from agentfarm.web import admin, api, csrf, ids, render, sessions
from agentfarm.web import errors as web_errors
from agentfarm.web.ratelimit import LoginLimiter

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(badge=render.badge, fmt_cost=fmt_cost, version=__version__)
templates.env.globals.update(fmt_bytes=fmt_bytes)
PAGE = 200  # events per page of the run view
RUN_ID = ids.RunId
KEY = ids.ConfigKey
FILTERS = ("active", "running", "queued", "succeeded", "failed", "stopped", "lost")

router = APIRouter(include_in_schema=False)


class LoginRequiredError(Exception):
    """Raised by page dependencies; answered with a redirect to the login page."""


class CsrfError(Exception):
    pass


# --- helpers ---------------------------------------------------------------------------------
def _key(request: Request) -> bytes:
    key: bytes = request.app.state.web_key
    return key


async def viewer(request: Request) -> sessions.Principal:
    principal = await sessions.authenticate(request)
    if principal is None:
        raise LoginRequiredError
    return principal


Viewer = Annotated[sessions.Principal, Depends(viewer)]


async def checked(request: Request, who: Viewer) -> sessions.Principal:
    """A state-changing page request: it must carry the CSRF token of this browser."""
    if who.binding is None:  # a bearer token: no ambient credentials, nothing to forge
        return who
    presented = request.headers.get(csrf.HEADER)
    if presented is None:
        form = await request.form()
        value = form.get(csrf.FIELD)
        presented = value if isinstance(value, str) else None
    if not csrf.valid(_key(request), who.binding, presented):
        raise CsrfError
    return who


Checked = Annotated[sessions.Principal, Depends(checked)]


def page(
    request: Request,
    name: str,
    who: sessions.Principal | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    token = csrf.token_for(_key(request), who.binding) if who and who.binding else ""
    context.update(request=request, who=who, csrf_token=token, csrf_field=csrf.FIELD)
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _safe_next(value: str | None) -> str:
    if not value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return "/"
    return value


def elapsed(run: models.Run) -> float | None:
    if run.started_at is None:
        return None
    end = run.finished_at or models.utcnow()
    return (end - run.started_at).total_seconds()


templates.env.globals.update(elapsed=lambda r: fmt_duration(elapsed(r)))


# --- login -----------------------------------------------------------------------------------
@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    if await sessions.authenticate(request) is not None:
        return see_other(_safe_next(next))
    return _login_page(request, next)


def _login_page(
    request: Request, next: str | None, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    nonce = request.cookies.get(sessions.PRELOGIN_COOKIE) or sessions.new_secret()
    response = templates.TemplateResponse(
        request,
        "login.html",
        {
            "who": None,
            "next": _safe_next(next),
            "error": error,
            "csrf_field": csrf.FIELD,
            "csrf_token": csrf.token_for(_key(request), f"pre:{nonce}"),
        },
        status_code=status_code,
    )
    response.headers["Cache-Control"] = "no-store"
    sessions.set_cookie(
        response, request, sessions.PRELOGIN_COOKIE, nonce, max_age=3600, samesite="strict"
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
    nonce = request.cookies.get(sessions.PRELOGIN_COOKIE, "")
    if not csrf.valid(_key(request), f"pre:{nonce}", csrf_token):
        return _login_page(request, next, "The form expired; please try again.", 403)
    settings: Settings = request.app.state.settings
    limiter: LoginLimiter = request.app.state.login_limiter
    address = sessions.client_address(request, settings)
    wait = limiter.retry_after(username, address)
    if wait:
        limited = _login_page(
            request, next, f"Too many failed logins; try again in {int(wait) + 1} s.", 429
        )
        limited.headers["Retry-After"] = str(int(wait) + 1)
        return limited
    store = sessions.users(request)
    user = await store.get_user(username)
    ok = await sessions.verify_password(user.password_hash if user else None, password)
    if user is None or not ok:
        limiter.failed(username, address)
        log.warning("failed cockpit login for %r from %s", username[:64], address)
        return _login_page(request, next, "Wrong user name or password.", 401)
    limiter.succeeded(username)
    secret = sessions.new_secret()
    hours = settings.session_hours
    await store.create_session(user, secret, timedelta(hours=hours))
    response = see_other(_safe_next(next))
    sessions.set_cookie(
        response, request, sessions.SESSION_COOKIE, secret, max_age=int(hours * 3600)
    )
    sessions.clear_cookie(response, request, sessions.PRELOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, who: Checked) -> Response:
    cookie = request.cookies.get(sessions.SESSION_COOKIE)
    if cookie:
        await sessions.users(request).delete_session(cookie)
    response = see_other("/login")
    sessions.clear_cookie(response, request, sessions.SESSION_COOKIE)
    return response


# --- dashboard -------------------------------------------------------------------------------
def _statuses(status: str | None) -> list[models.RunStatus] | None:
    if status in (None, "", "all"):
        return None
    if status == "active":
        return sorted(models.ACTIVE_STATUSES)
    try:
        return [models.RunStatus(status)]
    except ValueError as exc:
        raise errors.InvalidInputError(f"unknown status filter {status!r}") from exc


async def _dashboard_runs(store: Store, status: str | None) -> list[models.Run]:
    runs = await store.list_runs(statuses=_statuses(status), limit=100)
    # Running and queued first, then the rest by recency (list_runs is newest first).
    order = {models.RunStatus.running: 0, models.RunStatus.starting: 0, models.RunStatus.queued: 1}
    return sorted(runs, key=lambda r: order.get(r.status, 2))


def _signature(runs: list[models.Run]) -> str:
    return json.dumps(
        [(r.id, r.status, r.cost_usd, r.num_turns, r.branch, r.started_at is None) for r in runs],
        default=str,
    )


@router.get("/")
async def dashboard(request: Request, who: Viewer, status: str | None = None) -> Response:
    runs = await _dashboard_runs(api.store(request), status)
    return page(request, "dashboard.html", who, runs=runs, status=status or "all", filters=FILTERS)


@router.get("/dashboard/live")
async def dashboard_live(request: Request, who: Viewer, status: str | None = None) -> Response:
    store = api.store(request)
    _statuses(status)  # 422 now, not inside the stream

    async def stream() -> AsyncIterator[dict[str, Any]]:
        last = ""
        while True:
            runs = await _dashboard_runs(store, status)
            signature = _signature(runs)
            if signature != last:
                last = signature
                html = templates.get_template("_runs.html").render(runs=runs)
                yield {"event": "runs", "data": html}
            await asyncio.sleep(1.0)

    return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})


# --- configs ---------------------------------------------------------------------------------
FORM_FIELDS = (
    "name",
    "repo",
    "prompt",
    "base_branch",
    "model",
    "permission_mode",
    "max_turns",
    "allowed_tools",
    "disallowed_tools",
    "append_system_prompt",
    "env",
    "backend",
    "sandbox_mode",
    "network",
    "egress",
    "memory_mb",
)


def _form_values(cfg: models.ConfigIn | None) -> dict[str, str]:
    if cfg is None:
        return {"permission_mode": "bypassPermissions", "backend": "local",
                "sandbox_mode": "bwrap", "network": "allowlist", "memory_mb": "4096"}  # fmt: skip
    box = (
        cfg.backend.sandbox
        if isinstance(cfg.backend, backend_config.LocalSpec)
        else backend_config.SandboxSpec()
    )
    return {
        "name": cfg.name,
        "repo": cfg.repo,
        "prompt": cfg.prompt,
        "base_branch": cfg.base_branch or "",
        "model": cfg.model or "",
        "permission_mode": cfg.permission_mode,
        "max_turns": str(cfg.max_turns or ""),
        "allowed_tools": "\n".join(cfg.allowed_tools),
        "disallowed_tools": "\n".join(cfg.disallowed_tools),
        "append_system_prompt": cfg.append_system_prompt or "",
        "env": "\n".join(f"{k}={v}" for k, v in cfg.env.items()),
        "backend": cfg.backend.type,
        "sandbox_mode": box.mode,
        "network": box.network,
        "egress": "\n".join(box.egress),
        "memory_mb": str(box.memory_mb or ""),
    }


def _parse_config(
    values: Mapping[str, str], base: models.ConfigIn | None
) -> tuple[models.ConfigIn | None, dict[str, str]]:
    """Form values over ``base`` (fields the form does not show are kept)."""
    problems: dict[str, str] = {}
    body: dict[str, Any] = (
        base.model_dump(include=set(models.ConfigIn.model_fields)) if base else {}
    )

    def lines(name: str) -> list[str]:
        return [
            x.strip() for x in values.get(name, "").replace(",", "\n").splitlines() if x.strip()
        ]

    previous: dict[str, Any] = body.get("backend") or {}
    kind = values.get("backend", "").strip()
    for name in ("name", "repo", "prompt", "permission_mode"):
        body[name] = values.get(name, "").strip() if name != "prompt" else values.get(name, "")
    for name in ("base_branch", "model", "append_system_prompt"):
        body[name] = values.get(name, "").strip() or None
    body["allowed_tools"] = lines("allowed_tools")
    body["disallowed_tools"] = lines("disallowed_tools")
    for name, target in (("max_turns", "max_turns"),):
        raw = values.get(name, "").strip()
        body[target] = raw or None
    env: dict[str, str] = {}
    for line in values.get("env", "").splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            problems["env"] = f"{line.strip()!r}: write KEY=VALUE, one per line"
            break
        env[key.strip()] = value
    body["env"] = env
    if kind == "local":
        sandbox = dict(previous.get("sandbox") or {})
        sandbox["mode"] = values.get("sandbox_mode", "bwrap")
        sandbox["network"] = values.get("network", "allowlist")
        sandbox["egress"] = lines("egress")
        sandbox["memory_mb"] = values.get("memory_mb", "").strip() or None
        body["backend"] = {"type": kind, "sandbox": sandbox}
    else:  # the form has no fields of other backends yet: keep what the config had
        body["backend"] = {**(previous if previous.get("type") == kind else {}), "type": kind}
    try:
        parsed = models.ConfigIn.model_validate(body)
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            field = loc[0] if loc else "name"
            if field == "backend" and "sandbox" in loc[:-1]:
                after = loc[loc.index("sandbox") + 1]
                field = {"mode": "sandbox_mode"}.get(after, after)
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.setdefault(field if field in FORM_FIELDS else "name", message)
        return None, problems
    return (None, problems) if problems else (parsed, problems)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


@router.get("/configs")
async def configs(request: Request, who: Viewer) -> Response:
    return page(request, "configs.html", who, configs=await api.store(request).list_configs())


@router.get("/configs/new")
async def config_new(request: Request, who: Viewer, copy: str | None = None) -> Response:
    values = _form_values(None)
    if copy:
        source = await api.store(request).get_config(copy)
        values = _form_values(source)
        values["name"] = f"{source.name}-copy"[:64]
    return page(
        request, "config_form.html", who, values=values, problems={}, action="/configs/new",
        title="New config", copy=copy or "",
    )  # fmt: skip


@router.post("/configs/new")
async def config_create(request: Request, who: Checked) -> Response:
    values = await _form(request)
    base = await api.store(request).get_config(values["copy"]) if values.get("copy") else None
    parsed, problems = _parse_config(values, base)
    if parsed is not None:
        try:
            await api.store(request).create_config(models.AgentConfig(**parsed.model_dump()))
        except errors.ConflictError:
            problems["name"] = "a config with this name already exists"
        else:
            return see_other("/configs")
    return page(
        request, "config_form.html", who, 422, values=values, problems=problems,
        action="/configs/new", title="New config", copy=values.get("copy", ""),
    )  # fmt: skip


@router.get("/configs/{key}/edit")
async def config_edit(request: Request, who: Viewer, key: KEY) -> Response:
    cfg = await api.store(request).get_config(key)
    return page(
        request, "config_form.html", who, values=_form_values(cfg), problems={},
        action=f"/configs/{cfg.id}/edit", title=f"Edit {cfg.name}", copy="",
    )  # fmt: skip


@router.post("/configs/{key}/edit")
async def config_update(request: Request, who: Checked, key: KEY) -> Response:
    current = await api.store(request).get_config(key)
    values = await _form(request)
    parsed, problems = _parse_config(values, current)
    if parsed is not None:
        updated = models.AgentConfig(
            **parsed.model_dump(), id=current.id, created_at=current.created_at
        )
        try:
            await api.store(request).update_config(updated)
        except errors.ConflictError:
            problems["name"] = "a config with this name already exists"
        else:
            return see_other("/configs")
    return page(
        request, "config_form.html", who, 422, values=values, problems=problems,
        action=f"/configs/{current.id}/edit", title=f"Edit {current.name}", copy="",
    )  # fmt: skip


@router.post("/configs/{key}/delete")
async def config_delete(request: Request, who: Checked, key: KEY) -> Response:
    await api.store(request).delete_config(key)
    return see_other("/configs")


@router.post("/configs/{key}/launch")
async def config_launch(request: Request, who: Checked, key: KEY) -> Response:
    cfg = await api.store(request).get_config(key)
    values = await _form(request)
    spec = cfg.spec()
    override = values.get("prompt", "")
    if override.strip():  # for this run only: the saved config is untouched
        spec = spec.model_copy(update={"prompt": override})
    try:
        run = await api.supervisor(request).submit(spec, config=cfg)
    except errors.AgentfarmError as exc:
        return page(
            request, "configs.html", who, 400,
            configs=await api.store(request).list_configs(), launch_error=(cfg.id, str(exc)),
        )  # fmt: skip
    return see_other(f"/runs/{run.id}")


# --- runs ------------------------------------------------------------------------------------
def _tokens(run: models.Run) -> int:
    return run.usage.total


templates.env.globals.update(tokens=_tokens)


@router.get("/runs/{run_id}")
async def run_page(request: Request, who: Viewer, run_id: RUN_ID) -> Response:
    store = api.store(request)
    run = await store.get_run(run_id)
    last = await store.last_seq(run_id)
    events = await store.list_events_before(run_id, before=last + 1, limit=PAGE)
    oldest = events[0].seq if events else last + 1
    return page(
        request, "run.html", who, run=run, events=render.events_html(events),
        last_seq=last, oldest=oldest,
    )  # fmt: skip


@router.get("/runs/{run_id}/older")
async def run_older(
    request: Request, who: Viewer, run_id: RUN_ID, before: Annotated[int, Query(ge=1)]
) -> Response:
    events = await api.store(request).list_events_before(run_id, before=before, limit=PAGE)
    oldest = events[0].seq if events else 1
    html = render.events_html(events)
    more = ""
    if oldest > 1:
        more = templates.get_template("_older.html").render(run_id=run_id, oldest=oldest)
    body = more + str(html)  # both are escaped HTML: an autoescaped template and render.py
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/runs/{run_id}/head")
async def run_head(request: Request, who: Viewer, run_id: RUN_ID) -> Response:
    run = await api.store(request).get_run(run_id)
    return page(request, "_run_head.html", who, run=run)


@router.get("/runs/{run_id}/live")
async def run_live(
    request: Request,
    who: Viewer,
    run_id: RUN_ID,
    after: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    store = api.store(request)
    await store.get_run(run_id)
    last_id = request.headers.get("last-event-id", "").strip()
    if last_id.isdigit():
        after = max(after, int(last_id))
    hub = api.supervisor(request).hub

    async def stream() -> AsyncIterator[dict[str, Any]]:
        async for batch in hub.follow(run_id, after):
            yield {"id": str(batch[-1].seq), "event": "events", "data": render.events_html(batch)}
            if any(e.type in (models.EventType.run_status, models.EventType.agent_result)
                   for e in batch):  # fmt: skip
                run = await store.get_run(run_id)
                head = templates.get_template("_run_head.html").render(run=run)
                yield {"event": "head", "data": head}
        yield {"event": "end", "data": run_id}

    return EventSourceResponse(
        stream(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.post("/runs/{run_id}/stop")
async def run_stop(request: Request, who: Checked, run_id: RUN_ID) -> Response:
    with contextlib.suppress(errors.ConflictError):  # it ended meanwhile: the page shows how
        await api.supervisor(request).stop_run(run_id)
    return see_other(f"/runs/{run_id}")


@router.post("/runs/{run_id}/delete")
async def run_delete(request: Request, who: Checked, run_id: RUN_ID) -> Response:
    try:
        await api.supervisor(request).delete_run(run_id)
    except errors.ConflictError:  # not ended yet: its page shows what it is doing
        return see_other(f"/runs/{run_id}")
    return see_other("/")


# --- settings: named API tokens --------------------------------------------------------------
#: Lifetimes offered when creating a token (days; 0: it does not expire).
TOKEN_DAYS = (0, 7, 30, 90, 365)


async def _visible_tokens(request: Request, who: sessions.Principal) -> list[ApiToken]:
    """Admins see every token; other users their own (nobody else's names or use)."""
    store = sessions.users(request)
    if who.admin:
        return await store.list_tokens()
    return await store.list_tokens(who.user_id) if who.user_id else []


def _settings_page(
    request: Request,
    who: sessions.Principal,
    tokens: list[ApiToken],
    status_code: int = 200,
    new_token: tuple[str, str] | None = None,
    problem: str | None = None,
    **extra: Any,
) -> HTMLResponse:
    return page(
        request, "settings.html", who, status_code, tokens=tokens, new_token=new_token,
        problem=problem, token_days=TOKEN_DAYS, now=models.utcnow(), **extra,
    )  # fmt: skip


async def _disk_use(request: Request) -> retention.DiskUse:
    cache: retention.DiskUseCache | None = getattr(request.app.state, "disk_use", None)
    if cache is None:
        settings: Settings = request.app.state.settings
        cache = request.app.state.disk_use = retention.DiskUseCache(
            settings.data_dir, settings.runs_dir
        )
    return await cache.get()


@router.get("/settings")
async def settings_page(request: Request, who: Viewer) -> Response:
    settings: Settings = request.app.state.settings
    return _settings_page(
        request,
        who,
        await _visible_tokens(request, who),
        disk=await _disk_use(request),
        data_dir=settings.data_dir,
        retention_hours=settings.retention_hours,
    )


@router.post("/settings/tokens")
async def token_create(request: Request, who: Checked) -> Response:
    values = await _form(request)
    name = values.get("name", "").strip()
    days = values.get("expires_days", "0").strip() or "0"
    store = sessions.users(request)
    owner = await store.get_user_by_id(who.user_id) if who.user_id else None
    problem = None
    if not name or len(name) > 64:
        problem = "give the token a name (up to 64 characters)"
    elif not days.isdigit() or int(days) not in TOKEN_DAYS:
        problem = f"choose a lifetime of {', '.join(map(str, TOKEN_DAYS[1:]))} days, or none"
    elif owner is None:
        # A token acts as its user: the primary token and accountless proxy users have none.
        problem = "API tokens belong to a cockpit user: sign in with a user account to create one"
    if problem is not None or owner is None:
        tokens = await _visible_tokens(request, who)
        return _settings_page(request, who, tokens, 422, problem=problem)
    expires = models.utcnow() + timedelta(days=int(days)) if int(days) else None
    secret = "afn_" + sessions.new_secret()
    await store.create_token(name, secret, owner, created_by=who.name, expires_at=expires)
    # Shown once, in this response only; the store keeps its hash.
    tokens = await _visible_tokens(request, who)
    return _settings_page(request, who, tokens, new_token=(name, secret))


@router.post("/settings/tokens/{token_id}/revoke")
async def token_revoke(request: Request, who: Checked, token_id: str) -> Response:
    # Admins revoke any token; others only their own (someone else's is "not found").
    if not who.admin and who.user_id is None:
        raise errors.NotFoundError(f"no API token with id {ids.shown(token_id)}")
    await sessions.users(request).revoke_token(token_id, None if who.admin else who.user_id)
    return see_other("/settings")


# --- the app shell ---------------------------------------------------------------------------
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


VENDOR = HERE / "static" / "vendor"
VENDORED = ("htmx.min.js", "htmx-ext-sse.min.js")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


async def startup(app: FastAPI, store: Store, settings: Settings) -> None:
    """Per-app cockpit state; called by the app's lifespan once the store is open."""
    missing = [name for name in VENDORED if not (VENDOR / name).is_file()]
    if missing:
        raise errors.ConfigurationError(
            f"the cockpit's browser assets are missing from {VENDOR} ({', '.join(missing)}): "
            "run `make install` (it fetches them from the npm registry with "
            "scripts/build-web-vendor.sh)"
        )
    app.state.users = Users(store.database)
    app.state.web_key = (
        await asyncio.to_thread(read_or_create_token, settings.data_dir / "cookie-key")
    ).encode()
    app.state.login_limiter = LoginLimiter(
        settings.login_failures_per_user, settings.login_failures_per_address
    )
    risk = sessions.forward_auth_risk(settings)
    if risk:
        log.warning("%s", risk)
    if await app.state.users.count_users() == 0:
        if os.environ.get("AGENTFARM_FIRST_RUN_PROMPT") == "1" and sys.stdin.isatty():
            await _first_user(app.state.users)
        else:
            log.warning(
                "no cockpit user yet: create one with `agentfarm user add NAME` "
                "(the API token works meanwhile)"
            )


def _ask_first_user() -> tuple[str, str] | None:
    """Ask on the terminal for the first user (`make run` on a TTY); None to skip."""
    print("No cockpit user exists yet. Create one now (Ctrl-D to skip).")
    try:
        name = input("user name [admin]: ").strip() or "admin"
        while True:
            password = getpass.getpass("password (8+ characters): ")
            if len(password) < 8:
                print("too short; use at least 8 characters")
            elif getpass.getpass("again: ") != password:
                print("the two passwords differ; try again")
            else:
                return name, password
    except (EOFError, KeyboardInterrupt):
        print("\nskipped: create one later with `agentfarm user add NAME`")
        return None


async def _first_user(users: Users) -> None:
    answer = await asyncio.to_thread(_ask_first_user)
    if answer is None:
        return
    name, password = answer
    try:  # the first user of an empty database is an admin
        await users.create_user(name, await sessions.hash_password(password))
    except errors.AgentfarmError as exc:
        log.warning("could not create user %s: %s", name, exc)
        return
    log.info("created cockpit user %s", name)


def install(app: FastAPI) -> None:
    """Add the cockpit to an app: pages, static files, user admin, and its error handlers."""

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(LoginRequiredError)
    async def _login(request: Request, _: LoginRequiredError) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        url = f"/login?next={quote(target)}"
        if request.headers.get("hx-request") or request.headers.get("accept", "").startswith(
            "text/event-stream"
        ):
            # A script's request: the error shape, and htmx goes to the login page.
            body = web_errors.error_body("unauthorized", "sign in first (the cookie expired?)")
            return JSONResponse(body, status_code=401, headers={"HX-Redirect": url})
        return see_other(url)

    @app.exception_handler(CsrfError)
    async def _csrf(request: Request, _: CsrfError) -> Response:
        return HTMLResponse(
            "<!doctype html><title>Forbidden</title><p>This form is stale or was not sent by "
            'the cockpit (CSRF token missing or wrong). <a href="/">Reload</a> and try again.',
            status_code=403,
        )

    app.include_router(router)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
