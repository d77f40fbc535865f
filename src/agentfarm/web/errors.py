"""The one place where errors become HTTP responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from agentfarm.domain import errors

STATUS: list[tuple[type[errors.AgentfarmError], int, str]] = [
    (errors.NotFoundError, 404, "not_found"),
    (errors.ConflictError, 409, "conflict"),
    (errors.InvalidInputError, 422, "invalid_input"),
    (errors.ConfigurationError, 400, "not_configured"),
    (errors.LaunchError, 502, "launch_failed"),
    (errors.BackendError, 502, "backend_error"),
]


def error_body(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": {"code": code, "message": message, **extra}}


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.AgentfarmError)
    async def _domain(_: Request, exc: errors.AgentfarmError) -> JSONResponse:
        for kind, status, code in STATUS:
            if isinstance(exc, kind):
                return JSONResponse(error_body(code, str(exc)), status_code=status)
        return JSONResponse(error_body("error", str(exc)), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                "reason": err.get("msg", "invalid"),
            }
            for err in exc.errors()
        ]
        summary = "; ".join(f"{f['field'] or 'body'}: {f['reason']}" for f in fields[:5])
        return JSONResponse(
            error_body("validation_error", f"invalid request: {summary}", fields=fields),
            status_code=422,
        )
