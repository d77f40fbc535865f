"""One error shape everywhere (`{"error": {"code", "message"}}`), unknown ids of any shape
are 404, the API docs need authentication, and the CLI turns any error into one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from agentfarm.cli.client import _error_message

from .conftest import AUTH, AppFactory
from .web_helpers import cockpit, login


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code and error["message"], error
    return error


async def test_framework_errors_answer_the_error_shape(app_client: AppFactory) -> None:
    async with app_client() as client:
        assert_error(await client.get("/api/nope"), 404, "not_found")
        assert_error(await client.get("/nope/deeper"), 404, "not_found")
        assert_error(await client.get("/static/nope.css"), 404, "not_found")
        wrong = await client.delete("/api/runs")
        error = assert_error(wrong, 405, "method_not_allowed")
        assert wrong.headers["allow"] and wrong.headers["allow"] in error["message"]
        anonymous = await client.get("/api/runs", headers={"Authorization": ""})
        assert_error(anonymous, 401, "unauthorized")
        invalid = await client.post(
            "/api/configs", json={"name": "x", "repo": "/r", "max_turns": 0}
        )
        error = assert_error(invalid, 422, "validation_error")
        assert "max_turns" in error["message"]
        bad_query = await client.get("/api/runs", params={"limit": "many"})
        assert "limit" in assert_error(bad_query, 422, "validation_error")["message"]


async def test_a_csrf_less_api_call_answers_the_error_shape(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        refused = await browser.post("/api/configs", json={"name": "x", "repo": "/r"})
        assert "CSRF" in assert_error(refused, 403, "forbidden")["message"]


MALFORMED = ["x", "..", "a" * 300, "ünïcödé", "%00", "0123456789AB", "0123456789abc", "%20"]


@pytest.mark.parametrize("run_id", MALFORMED)
async def test_unknown_runs_are_404_whatever_their_shape(
    app_client: AppFactory, run_id: str
) -> None:
    async with app_client() as client:
        for method, path, body in (
            ("GET", "/api/runs/{}", None),
            ("POST", "/api/runs/{}/stop", None),
            ("POST", "/api/runs/{}/messages", {"text": "hi"}),
            ("GET", "/api/runs/{}/events", None),
        ):
            response = await client.request(method, path.format(run_id), json=body)
            error = assert_error(response, 404, "not_found")
            assert len(error["message"]) < 200, error  # a long id is not echoed whole


@pytest.mark.parametrize("key", [*MALFORMED, "%2E%2E%2F%2E%2E", "a%2Fb"])
async def test_unknown_configs_are_404_whatever_their_shape(
    app_client: AppFactory, key: str
) -> None:
    async with app_client() as client:
        for method, body in (
            ("GET", None),
            ("PUT", {"name": "demo", "repo": "/r"}),
            ("DELETE", None),
        ):
            response = await client.request(method, f"/api/configs/{key}", json=body)
            assert_error(response, 404, "not_found")


async def test_cockpit_pages_of_unknown_ids_are_404(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        for path in ("/runs/x", "/runs/" + "a" * 300, "/runs/x/head", "/configs/%00/edit"):
            assert_error(await cp.api.get(path), 404, "not_found")


async def test_api_docs_need_authentication_unless_made_public(app_client: AppFactory) -> None:
    async with app_client() as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            anonymous = await client.get(path, headers={"Authorization": ""})
            assert_error(anonymous, 401, "unauthorized")
            assert (await client.get(path)).status_code == 200, path
        spec = (await client.get("/openapi.json")).json()
        assert "/api/runs/{run_id}" in spec["paths"]
        assert "/openapi.json" not in spec["paths"] and "/docs" not in spec["paths"]
    async with app_client(public_api_docs=True) as client:
        for path in ("/openapi.json", "/docs"):
            assert (await client.get(path, headers={"Authorization": ""})).status_code == 200


async def test_an_unexpected_error_is_a_500_in_the_error_shape(app_client: AppFactory) -> None:
    async with app_client() as client:
        app = client._transport.app  # type: ignore[attr-defined]

        async def broken() -> None:
            raise RuntimeError("secret internals")

        app.state.store.list_configs = broken
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=AUTH
        ) as raw:
            response = await raw.get("/api/configs")
        error = assert_error(response, 500, "internal_error")
        assert "secret internals" not in response.text and "log" in error["message"]


def response(status: int, content: bytes, content_type: str = "application/json") -> httpx.Response:
    request = httpx.Request("GET", "http://127.0.0.1:8080/api/runs")
    return httpx.Response(
        status, content=content, headers={"content-type": content_type}, request=request
    )


def test_the_cli_reads_the_error_shape_as_one_line() -> None:
    body = b'{"error": {"code": "not_found", "message": "no run with id \'x\';\\n see ls"}}'
    assert _error_message(response(404, body)) == "no run with id 'x'; see ls"
    html = b"<html>\n<body>502 Bad Gateway</body>\n</html>"
    line = _error_message(response(502, html, "text/html"))
    assert line.startswith("HTTP 502 from 127.0.0.1: <html>") and "\n" not in line
    assert _error_message(response(500, b"")) == "HTTP 500 from 127.0.0.1"


def test_a_path_that_leaves_the_api_is_one_clear_cli_error() -> None:
    # `agentfarm show ../..` asks for /api/runs/../.., which is the cockpit's `/` (a redirect).
    from agentfarm.cli.client import Client, ClientError

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(303, headers={"location": "/login"}, request=request)

    client = Client("http://127.0.0.1:8080", token="t")
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(answer))
    with client, pytest.raises(ClientError) as caught:
        client.get("/api/runs/../..")
    message = str(caught.value)
    assert "HTTP 303" in message and "\n" not in message
