"""The OpenAPI schema and its browsable pages, behind the API's authentication unless
``public_api_docs`` is set: the schema maps every endpoint, which is no one's business but
the farm's users'."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from agentfarm.web.auth import check_bearer

OPENAPI_URL = "/openapi.json"


def install(app: FastAPI) -> None:
    """Serve /openapi.json, /docs and /redoc to authenticated clients only (a signed-in
    browser's cookie is enough: the pages fetch the schema with it)."""
    router = APIRouter(include_in_schema=False, dependencies=[Depends(check_bearer)])

    @router.get(OPENAPI_URL)
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{app.title} - API")

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{app.title} - API")

    app.include_router(router)
