"""Forge set-up pages: the list, a new forge, a forge's settings with the webhook URL to paste,
the webhook secret once (when made), and a "test token" button answered inline (htmx).

Forges are for admins, reading them too: the scopes' one check (``access``) answers anyone
else before these handlers run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from agentfarm.domain import errors
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline.admin import TOKEN_WORKS
from agentfarm.web import api_forges, identity
from agentfarm.web.pages import access, forge_forms, forms, templating

router = APIRouter(include_in_schema=False)


def _form(
    request: Request,
    who: identity.Principal,
    *,
    forge: domain.Forge | None,
    values: dict[str, str],
    problems: dict[str, str] | None = None,
    status_code: int = 200,
    **extra: Any,
) -> HTMLResponse:
    return templating.page(
        request, "forge_form.html", who, status_code, forge=forge, values=values,
        problems=problems or {}, kinds=forge_forms.KINDS,
        webhook_url=api_forges.webhook_url(request, forge.name) if forge else "",
        action=f"/forges/{forge.name}" if forge else "/forges/new", **extra,
    )  # fmt: skip


@router.get("/forges")
async def forges(request: Request, who: access.Viewer) -> Response:
    found = await api_forges.admin_of(request).list()
    urls = {f.name: api_forges.webhook_url(request, f.name) for f in found}
    return templating.page(request, "forges.html", who, forges=found, webhook_urls=urls)


@router.get("/forges/new")
async def forge_new(request: Request, who: access.Viewer) -> Response:
    return _form(request, who, forge=None, values=forge_forms.values_of(None))


@router.post("/forges/new")
async def forge_create(request: Request, who: access.Checked) -> Response:
    values = await forms.read(request)
    parsed, problems = forge_forms.parse(values, new=True)
    problem = None
    if isinstance(parsed, domain.ForgeIn):
        try:
            forge, secret = await api_forges.admin_of(request).add(parsed)
        except errors.ConflictError:
            problems["name"] = "a forge with this name already exists"
        except errors.InvalidInputError as exc:
            problem = str(exc)
        else:
            # The secret is shown in this answer only: no redirect that would lose it.
            return _form(
                request, who, forge=forge, values=forge_forms.values_of(forge), created=True,
                new_secret=secret,
            )  # fmt: skip
    values.pop("token", None)
    values.pop("webhook_secret", None)
    return _form(
        request, who, forge=None, values=values, problems=problems, status_code=422,
        problem=problem,
    )  # fmt: skip


@router.get("/forges/{name}")
async def forge_edit(request: Request, who: access.Viewer, name: api_forges.ForgeName) -> Response:
    forge = await api_forges.admin_of(request).get(name)
    return _form(request, who, forge=forge, values=forge_forms.values_of(forge))


@router.post("/forges/{name}")
async def forge_update(
    request: Request, who: access.Checked, name: api_forges.ForgeName
) -> Response:
    fa = api_forges.admin_of(request)
    forge = await fa.get(name)
    values = await forms.read(request)
    parsed, problems = forge_forms.parse(values, new=False)
    problem = None
    if isinstance(parsed, domain.ForgeSettings):
        token = forge_forms.secret_of(values, "token")
        webhook = forge_forms.secret_of(values, "webhook_secret")
        try:
            forge = await fa.update(name, parsed, token=token, webhook_secret=webhook)
        except errors.InvalidInputError as exc:
            problem = str(exc)
        else:
            secret = None
            if values.get("new_webhook_secret") == "1" and webhook is None:
                secret = await fa.rotate_webhook_secret(name)
            return _form(
                request, who, forge=forge, values=forge_forms.values_of(forge), saved=True,
                new_secret=secret,
            )  # fmt: skip
    values.pop("token", None)
    values.pop("webhook_secret", None)
    values["name"] = forge.name
    return _form(
        request, who, forge=forge, values=values, problems=problems, status_code=422,
        problem=problem,
    )  # fmt: skip


@router.post("/forges/{name}/delete")
async def forge_delete(
    request: Request, who: access.Checked, name: api_forges.ForgeName
) -> Response:
    fa = api_forges.admin_of(request)
    force = (await forms.read(request)).get("force") == "1"
    try:
        await api_forges.remove_forge(request, fa, name, force=force)
    except errors.ConflictError as exc:
        forge = await fa.get(name)
        return _form(
            request, who, forge=forge, values=forge_forms.values_of(forge), status_code=409,
            problem=str(exc), offer_force=True,
        )  # fmt: skip
    return templating.see_other("/forges")


@router.post("/forges/{name}/test")
async def forge_test(request: Request, who: access.Checked, name: api_forges.ForgeName) -> Response:
    """The token test's answer: a fragment for htmx, else the forge page around it."""
    fa = api_forges.admin_of(request)
    message = await fa.test(name)
    ok = message.startswith(TOKEN_WORKS)
    if request.headers.get("hx-request"):
        html = templating.fragment("_token_test.html", ok=ok, message=message)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})
    forge = await fa.get(name)
    return _form(
        request, who, forge=forge, values=forge_forms.values_of(forge),
        token_test=(ok, message),
    )  # fmt: skip
