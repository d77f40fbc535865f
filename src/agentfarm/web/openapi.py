"""The OpenAPI schema says what the API really answers: every error in the one error shape,
and on each operation the status codes it can answer (authentication, scopes, unknown ids,
body size, validation), besides those its route declares."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

ERROR_REF = "#/components/schemas/Error"

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "description": "Every error: a stable `code`, and a `message` saying what to do.",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {
                    "type": "array",
                    "description": "For `validation_error`: each field refused, and why.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "field": {"type": "string"},
                            "reason": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}

DESCRIPTIONS = {
    400: "Bad request.",
    401: "Missing, wrong or expired API token.",
    403: "The token lacks the scope this needs, or a browser request lacks its CSRF token.",
    404: "No such thing (a malformed id is an unknown one).",
    409: "Conflicts with the current state.",
    413: "The request body is over the size limit.",
    422: "Invalid request: the message and `fields` say what to change.",
    429: "A limit refuses it for now (the queue, a budget).",
    502: "The backend failed.",
    507: "The disk under the data directory is full: free space there, then retry.",
}

#: What operations answer from the domain's errors (``errors.STATUS``), besides the codes
#: every operation of their kind answers (see :func:`document`).
DOMAIN: dict[tuple[str, str], set[int]] = {
    ("post", "/api/configs"): {409},
    ("put", "/api/configs/{key}"): {409},
    ("delete", "/api/configs/{key}"): {409},
    ("post", "/api/runs"): {409, 429, 502},
    ("post", "/api/runs/{run_id}/stop"): {409},
    ("post", "/api/runs/{run_id}/messages"): {409},
    ("post", "/api/runs/{run_id}/interrupt"): {409},
    ("post", "/api/orchestration/dispatch"): {409, 429, 502},
    ("post", "/api/forges"): {409},
    ("put", "/api/forges/{name}"): {409},
    ("post", "/api/pipeline/attempts/{attempt_id}/retry"): {400, 409},
    ("post", "/api/pipeline/attempts/{attempt_id}/stop"): {400, 409},
    ("get", "/api/pipeline"): {404},
    ("post", "/api/admin/users"): {409},
    ("delete", "/api/admin/users/{name}"): {409},
    ("post", "/api/tokens"): {404},
    ("get", "/api/push/key"): {400},
    ("post", "/api/push/subscriptions"): {400},
    ("delete", "/api/push/subscriptions"): {400, 404},
}

#: The operations anyone may call: the rest need a token (``auth.check_bearer``).
PUBLIC = frozenset({("get", "/api/health"), ("post", "/api/forges/{name}/webhook")})


def tighten(node: Any, components: dict[str, Any]) -> None:
    """Say what pydantic checks but leaves out of the schema: a dict whose keys have a
    pattern takes no other keys, and a discriminated union's tag must be given."""
    if isinstance(node, list):
        for item in node:
            tighten(item, components)
        return
    if not isinstance(node, dict):
        return
    if len(node.get("patternProperties") or {}) == 1 and not node.keys() & {
        "additionalProperties",
        "properties",
    }:
        node["additionalProperties"] = False
    discriminator = node.get("discriminator")
    if isinstance(discriminator, dict):
        tag = discriminator["propertyName"]
        for ref in discriminator.get("mapping", {}).values():
            target = components.get(ref.rsplit("/", 1)[-1], {})
            if tag not in target.setdefault("required", []):
                target["required"].append(tag)
    for value in node.values():
        tighten(value, components)


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the error shape and the status codes every kind of operation can answer."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    tighten(schema, components)
    components["Error"] = ERROR_SCHEMA
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            codes = set(DOMAIN.get((method, path), ()))
            params = operation.get("parameters", [])
            if (method, path) not in PUBLIC:
                codes |= {401, 403}
            if any(p.get("in") == "path" for p in params):
                codes.add(404)
            if "requestBody" in operation:
                codes |= {400, 413, 422}  # 400: a body that is not JSON at all
            if params:
                codes.add(422)
            if method != "get":
                codes.add(507)  # any write: the disk may be full
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(str(code), {"description": DESCRIPTIONS[code]})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
    return schema


def install(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(original())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
