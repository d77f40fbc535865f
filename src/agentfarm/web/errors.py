"""The one place where errors become HTTP responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

from agentfarm.domain import errors
from agentfarm.pipeline.forges import webhooks

STATUS: list[tuple[type[errors.AgentfarmError], int, str]] = [
    (errors.NotFoundError, 404, "not_found"),
    (errors.UnauthorizedError, 401, "unauthorized"),
    (errors.ForbiddenError, 403, "forbidden"),
    # Before InvalidInputError: a signed delivery we cannot read is a bad request.
    (webhooks.InvalidDeliveryError, 400, "invalid_delivery"),
    (errors.ConflictError, 409, "conflict"),
    (errors.InvalidInputError, 422, "invalid_input"),
    (errors.ConfigurationError, 400, "not_configured"),
    (errors.StorageFullError, 507, "storage_full"),
    (errors.LaunchError, 502, "launch_failed"),
    (errors.BackendError, 502, "backend_error"),
]


#: Codes for HTTP errors raised by the framework or by ``HTTPException``.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    421: "host_not_allowed",
    429: "too_many_requests",
}


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def error_body(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": {"code": code, "message": message, **extra}}


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.AgentfarmError)
    async def _domain(_: Request, exc: errors.AgentfarmError) -> JSONResponse:
        if isinstance(exc, errors.LimitReachedError):
            body = error_body(exc.code, str(exc), **exc.details)
            return JSONResponse(body, status_code=429)
        for kind, status, code in STATUS:
            if isinstance(exc, kind):
                return JSONResponse(error_body(code, str(exc)), status_code=status)
        return JSONResponse(error_body("error", str(exc)), status_code=500)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and message == "Not Found":
            message = "no such path: the API is under /api (see /docs)"
        elif exc.status_code == 405:
            headers["Allow"] = allowed_methods(request, headers.get("Allow", ""))
            message = f"method not allowed here; this path takes {headers['Allow']}"
        code = HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback by the server; the client learns only that it happened.
        return JSONResponse(
            error_body("internal_error", "internal error: the server's log has the details"),
            status_code=500,
        )

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


def allowed_methods(request: Request, given: str) -> str:
    """Every method some route takes on this path. The router names only the methods of the
    first route that matched the path, while a path often has one route per method; mounts
    (static files) answer for themselves, in ``given``."""
    methods = {m.strip().upper() for m in given.split(",") if m.strip()}
    for method in METHODS - methods:
        scope = {**request.scope, "method": method}
        for route in request.app.router.routes:
            if not isinstance(route, Mount) and route.matches(scope)[0] == Match.FULL:
                methods.add(method)
                break
    return ", ".join(sorted(methods))
