"""Saved configs: list, new (or a copy), edit, delete, and one-tap launch with an optional
prompt for that run only."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from agentfarm.domain import errors, models
from agentfarm.web import api, ids
from agentfarm.web.pages import access, forms, templating

KEY = ids.ConfigKey

router = APIRouter(include_in_schema=False)


@router.get("/configs")
async def configs(request: Request, who: access.Viewer) -> Response:
    found = await api.store(request).list_configs()
    return templating.page(request, "configs.html", who, configs=found)


@router.get("/configs/new")
async def config_new(request: Request, who: access.Viewer, copy: str | None = None) -> Response:
    values = forms.values_of(None)
    if copy:
        source = await api.store(request).get_config(copy)
        values = forms.values_of(source)
        values["name"] = f"{source.name}-copy"[:64]
    return templating.page(
        request, "config_form.html", who, values=values, problems={}, action="/configs/new",
        title="New config", copy=copy or "",
    )  # fmt: skip


@router.post("/configs/new")
async def config_create(request: Request, who: access.Checked) -> Response:
    values = await forms.read(request)
    base = await api.store(request).get_config(values["copy"]) if values.get("copy") else None
    parsed, problems = forms.parse_config(values, base)
    if parsed is not None:
        try:
            await api.store(request).create_config(models.AgentConfig(**parsed.model_dump()))
        except errors.ConflictError:
            problems["name"] = "a config with this name already exists"
        else:
            return templating.see_other("/configs")
    return templating.page(
        request, "config_form.html", who, 422, values=values, problems=problems,
        action="/configs/new", title="New config", copy=values.get("copy", ""),
    )  # fmt: skip


@router.get("/configs/{key}/edit")
async def config_edit(request: Request, who: access.Viewer, key: KEY) -> Response:
    cfg = await api.store(request).get_config(key)
    return templating.page(
        request, "config_form.html", who, values=forms.values_of(cfg), problems={},
        action=f"/configs/{cfg.id}/edit", title=f"Edit {cfg.name}", copy="",
    )  # fmt: skip


@router.post("/configs/{key}/edit")
async def config_update(request: Request, who: access.Checked, key: KEY) -> Response:
    current = await api.store(request).get_config(key)
    values = await forms.read(request)
    parsed, problems = forms.parse_config(values, current)
    if parsed is not None:
        updated = models.AgentConfig(
            **parsed.model_dump(), id=current.id, created_at=current.created_at
        )
        try:
            await api.store(request).update_config(updated)
        except errors.ConflictError:
            problems["name"] = "a config with this name already exists"
        else:
            return templating.see_other("/configs")
    return templating.page(
        request, "config_form.html", who, 422, values=values, problems=problems,
        action=f"/configs/{current.id}/edit", title=f"Edit {current.name}", copy="",
    )  # fmt: skip


@router.post("/configs/{key}/delete")
async def config_delete(request: Request, who: access.Checked, key: KEY) -> Response:
    await api.store(request).delete_config(key)
    return templating.see_other("/configs")


@router.post("/configs/{key}/launch")
async def config_launch(request: Request, who: access.Checked, key: KEY) -> Response:
    cfg = await api.store(request).get_config(key)
    values = await forms.read(request)
    spec = cfg.spec()
    override = values.get("prompt", "")
    if override.strip():  # for this run only: the saved config is untouched
        spec = spec.model_copy(update={"prompt": override})
    try:
        run = await api.supervisor(request).submit(spec, config=cfg)
    except errors.AgentfarmError as exc:
        code = 429 if isinstance(exc, errors.LimitReachedError) else 400
        return templating.page(
            request, "configs.html", who, code,
            configs=await api.store(request).list_configs(), launch_error=(cfg.id, str(exc)),
        )  # fmt: skip
    return templating.see_other(f"/runs/{run.id}")
