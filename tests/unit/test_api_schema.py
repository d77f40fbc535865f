"""The whole HTTP API, generated from its own OpenAPI schema (schemathesis): authenticated
with the API token, no answer is a 5xx, every error has the one error shape, and every answer
is one the schema documents (status, headers, body). Valid-by-schema requests are not refused
and invalid ones are.

The app runs in-process on the fake backend (no agent starts). Anything that would reach out
(forge base URLs, push endpoints) is pointed at a closed loopback port: tests talk to
loopback only. ``AGENTFARM_SCHEMA_EXAMPLES`` raises the examples per operation for a long run.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi import checks

from agentfarm.backends.fake import FakeBackend
from agentfarm.web.app import create_app

from .conftest import AUTH, make_settings

EXAMPLES = int(os.environ.get("AGENTFARM_SCHEMA_EXAMPLES", "12"))
#: Requests sent, by operation and mode.
SENT: Counter[str] = Counter()
#: Nothing listens here: an outgoing call fails at once, on loopback.
CLOSED = "http://127.0.0.1:9"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
              "all_proxy", "NO_PROXY", "no_proxy")  # fmt: skip


def _app(data: Path) -> Any:
    return create_app(make_settings(data), backends={"local": FakeBackend()})


#: A refused request may also be too large (413) for the body limit.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 429]
            }
        }
    }
)
#: The schema as the app serves it (a throwaway app: building the schema starts nothing).
SCHEMA = schemathesis.openapi.from_dict(_app(Path("/nonexistent")).openapi(), config=CONFIG)
OPERATIONS = {op.ok().label: op.ok() for op in SCHEMA.get_all_operations()}
#: Operations that take something a client can get wrong (negative cases need one).
INPUTS = {
    f"{method.upper()} {path}"
    for path, item in SCHEMA.raw_schema["paths"].items()
    for method, operation in item.items()
    if operation.get("parameters") or operation.get("requestBody")
}
CASES = [
    (label, mode)
    for label in sorted(OPERATIONS)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode.is_positive or label in INPUTS
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[asgi.ASGIClient]:
    app = _app(Path(tmp_path_factory.mktemp("schema")) / "data")
    # Whatever the server calls out to (forges, push services, Apprise) goes through a proxy
    # that is a closed loopback port: generated URLs never reach the network.
    saved = {name: os.environ.get(name) for name in PROXY_VARS}
    os.environ.update({name: "" if "NO" in name else CLOSED for name in PROXY_VARS})
    with asgi.get_client(app) as session:
        session.headers.update(AUTH)
        yield session
    asgi.shutdown_lifespans()
    if report := os.environ.get("AGENTFARM_SCHEMA_REPORT"):  # figures for a long run
        Path(report).write_text(json.dumps({"cases": sum(SENT.values()), "by": SENT}))
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _outward(case: Any) -> None:
    """Point URLs the server would call at a closed loopback port (valid cases only: the
    rewrite would mend a URL made invalid on purpose; the proxy covers those)."""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and isinstance(case.body, dict):
        if isinstance(case.body.get("base_url"), str):
            case.body["base_url"] = CLOSED
        if isinstance(case.body.get("endpoint"), str):
            case.body["endpoint"] = CLOSED.replace("http:", "https:") + "/push"


def schema_valid_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request valid by the schema is never refused for its shape (``validation_error``):
    the schema states every constraint the server checks. It may still meet the server's
    state (a config or secret it names does not exist: ``invalid_input``, 404, 409)."""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and response.status_code == 422:
        assert response.json()["error"]["code"] != "validation_error", response.text
    return None


def error_shape(response: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], error
    assert isinstance(error.get("message"), str) and error["message"], error


def _param(label: str, mode: GenerationMode) -> Any:
    return pytest.param(label, mode, id=f"{label}-{mode.value}")


# Schemathesis's own strategies use `random` (its problem, not the API's).
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize(("label", "mode"), [_param(*case) for case in CASES])
def test_every_operation_keeps_its_schema(
    client: asgi.ASGIClient, label: str, mode: GenerationMode
) -> None:
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        SENT[f"{label}-{mode.value}"] += 1
        _outward(case)
        response = case.call(session=client, base_url="http://testserver")
        case.validate_response(
            response,
            excluded_checks=[checks.positive_data_acceptance],
            additional_checks=[schema_valid_accepted],
        )
        error_shape(response)

    check()


METHODS = ("get", "put", "post", "delete", "patch")


@pytest.mark.parametrize("path", sorted(SCHEMA.raw_schema["paths"]))
def test_other_methods_are_405_with_the_real_allow_header(
    client: asgi.ASGIClient, path: str
) -> None:
    documented = {m for m in SCHEMA.raw_schema["paths"][path] if m in METHODS}
    url = path.replace("{key}", "x").replace("{name}", "x").replace("{run_id}", "0" * 12)
    url = url.replace("{attempt_id}", "0" * 12).replace("{token_id}", "0" * 12)
    for method in sorted(set(METHODS) - documented):
        response = client.request(method.upper(), url)
        assert response.status_code == 405, (method, url, response.text)
        allowed = {m.strip().lower() for m in response.headers["allow"].split(",")}
        assert allowed == documented, (method, url, allowed)
        error_shape(response)
