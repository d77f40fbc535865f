"""The JSON API and SSE stream over the fake backend."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step, claude_like_script
from agentfarm.domain import models

from .conftest import AUTH, AppFactory

CONFIG = {"name": "demo", "repo": "/srv/repo", "prompt": "fix the bug"}


async def wait_terminal(
    client: httpx.AsyncClient, run_id: str, timeout: float = 10
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            run: dict[str, Any] = (await client.get(f"/api/runs/{run_id}")).json()
            if run["status"] in ("succeeded", "failed", "stopped", "lost"):
                return run
            await asyncio.sleep(0.01)


async def wait_running(client: httpx.AsyncClient, run_id: str) -> None:
    async with asyncio.timeout(5):
        while (await client.get(f"/api/runs/{run_id}")).json()["status"] != "running":
            await asyncio.sleep(0.01)


async def test_health_needs_no_token_but_everything_else_does(app_client: AppFactory) -> None:
    async with app_client() as client:
        assert (await client.get("/api/health", headers={"Authorization": ""})).json()[
            "status"
        ] == "ok"
        for headers in (
            {"Authorization": ""},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic x"},
        ):
            response = await client.get("/api/configs", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            error = response.json()["error"]
            assert error["code"] == "unauthorized" and "agentfarm token" in error["message"]
        assert (await client.get("/api/configs")).status_code == 200


async def test_config_crud_and_validation(app_client: AppFactory) -> None:
    async with app_client() as client:
        created = await client.post("/api/configs", json=CONFIG)
        assert created.status_code == 201, created.text
        cfg = created.json()
        assert (
            cfg["backend"]["sandbox"]["mode"] == "bwrap"
            and cfg["permission_mode"] == "bypassPermissions"
        )
        assert (await client.post("/api/configs", json=CONFIG)).status_code == 409
        assert (await client.get("/api/configs/demo")).json()["id"] == cfg["id"]
        assert (await client.get(f"/api/configs/{cfg['id']}")).json()["name"] == "demo"
        updated = await client.put(
            "/api/configs/demo", json={**CONFIG, "name": "demo2", "max_turns": 5}
        )
        assert updated.status_code == 200 and updated.json()["id"] == cfg["id"]
        assert updated.json()["max_turns"] == 5
        assert [c["name"] for c in (await client.get("/api/configs")).json()] == ["demo2"]
        assert (await client.delete("/api/configs/demo2")).status_code == 204
        missing = await client.get("/api/configs/demo2")
        assert missing.status_code == 404 and "demo2" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**CONFIG, "name": "Bad Name"}, "name"),
        ({**CONFIG, "max_turns": 0}, "max_turns"),
        ({**CONFIG, "env": {"ANTHROPIC_API_KEY": "x"}}, "env"),
        ({**CONFIG, "env": {"1BAD": "x"}}, "env"),
        ({**CONFIG, "base_branch": "../etc"}, "base_branch"),
        ({**CONFIG, "repo": "--upload-pack=evil"}, "repo"),
        ({**CONFIG, "sandbox": {"memory_mb": 1}}, "backend.local.sandbox.memory_mb"),
        ({**CONFIG, "sandbox": {"network": "sometimes"}}, "backend.local.sandbox.network"),
        ({**CONFIG, "sandbox": {"egress": ["@nope"]}}, "backend.local.sandbox.egress"),
        (
            {**CONFIG, "backend": {"type": "local", "sandbox": {"memory_mb": 1}}},
            "backend.local.sandbox.memory_mb",
        ),
        (
            {**CONFIG, "backend": {"type": "kubernetes", "sandbox": {}}},
            "backend.kubernetes.sandbox",
        ),
        ({**CONFIG, "backend": {"type": "cloud"}}, "backend"),
        ({**CONFIG, "unknown": 1}, "unknown"),
        ({"name": "x"}, "repo"),
    ],
)
async def test_invalid_configs_are_422_with_the_field(
    app_client: AppFactory, body: dict[str, Any], field: str
) -> None:
    async with app_client() as client:
        response = await client.post("/api/configs", json=body)
        assert response.status_code == 422
        error = response.json()["error"]
        assert any(f["field"] == field for f in error["fields"]), error
        assert error["message"].startswith("invalid request")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"backend": "local", "kubernetes": {"namespace": "x"}}, "no effect with backend local"),
        ({"backend": "kubernetes", "sandbox": {"network": "open"}}, "no effect with backend kub"),
        ({"backend": {"type": "local"}, "sandbox": {}}, "go inside `backend`"),
    ],
)
async def test_an_ambiguous_config_in_the_old_shape_is_a_clear_422(
    app_client: AppFactory, body: dict[str, Any], words: str
) -> None:
    async with app_client() as client:
        response = await client.post("/api/configs", json={**CONFIG, **body})
        assert response.status_code == 422
        assert words in response.json()["error"]["message"], response.json()


async def test_an_unambiguous_config_in_the_old_shape_is_read(app_client: AppFactory) -> None:
    old = {**CONFIG, "backend": "kubernetes", "sandbox": {}, "kubernetes": {"namespace": "x"}}
    async with app_client() as client:
        created = await client.post("/api/configs", json=old)
        assert created.status_code == 201, created.text
        backend = created.json()["backend"]
        assert backend["type"] == "kubernetes" and backend["namespace"] == "x"
        assert "sandbox" not in created.json() and "kubernetes" not in created.json()


async def test_bad_input_is_a_clear_4xx(app_client: AppFactory) -> None:
    async with app_client() as client:
        assert (await client.get("/api/runs/0123456789ab")).status_code == 404
        assert (await client.get("/api/runs/not-a-run")).status_code == 404
        assert (await client.post("/api/runs/0123456789ab/stop")).status_code == 404
        assert (await client.get("/api/runs/0123456789ab/events")).status_code == 404
        unknown = await client.post("/api/runs", json={"config": "nope"})
        assert unknown.status_code == 422 and "nope" in unknown.json()["error"]["message"]
        both = await client.post("/api/runs", json={"config": "x", "spec": {"repo": "/r"}})
        assert both.status_code == 422
        broken = await client.post("/api/runs", content=b"{not json")
        assert broken.status_code == 422
        assert broken.json()["error"]["code"] == "validation_error"
        huge = await client.post("/api/configs", content=b"x" * 2_000_000)
        assert huge.status_code == 413
        assert huge.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> Any:
            for _ in range(40):
                yield b"y" * 65536

        chunked = await client.post("/api/configs", content=chunks())
        assert chunked.status_code == 413
        assert (await client.get("/api/health")).status_code == 200


async def test_run_from_config_succeeds_with_events_in_order(app_client: AppFactory) -> None:
    async with app_client() as client:
        await client.post("/api/configs", json=CONFIG)
        response = await client.post("/api/runs", json={"config": "demo", "prompt": "other task"})
        assert response.status_code == 201
        run = response.json()
        assert run["status"] == "queued" and run["branch"] == f"agentfarm/{run['id']}"
        assert run["spec"]["prompt"] == "other task"
        done = await wait_terminal(client, run["id"])
        assert done["status"] == "succeeded", done
        assert done["cost_usd"] == pytest.approx(0.0012) and done["num_turns"] == 1
        assert done["session_id"] == f"fake-session-{run['id']}"
        assert done["usage"]["input_tokens"] == 10
        events = (await client.get(f"/api/runs/{run['id']}/events")).json()
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        types = [e["type"] for e in events]
        assert types[0] == "run.status" and types[-1] == "run.status"
        assert "agent.init" in types and "agent.result" in types
        statuses = [e["data"]["status"] for e in events if e["type"] == "run.status"]
        assert statuses == ["queued", "starting", "running", "succeeded"]
        text = next(e for e in events if e["type"] == "agent.text")
        assert text["data"]["text"] == "Working on: other task"
        # the saved config is unchanged by the override
        assert (await client.get("/api/configs/demo")).json()["prompt"] == "fix the bug"
        listed = (await client.get("/api/runs", params={"status": "succeeded"})).json()
        assert [r["id"] for r in listed] == [run["id"]]
        assert (await client.get("/api/runs", params={"status": "running"})).json() == []
        after = (await client.get(f"/api/runs/{run['id']}/events", params={"after": 3})).json()
        assert after[0]["seq"] == 4


async def test_launch_fails_early_without_credentials(
    tmp_path: Any, fake_backend: FakeBackend
) -> None:
    from agentfarm.web.app import create_app

    from .conftest import make_settings, serve_app

    settings = make_settings(tmp_path / "d", anthropic_api_key=None)
    async with serve_app(create_app(settings, backends={"local": fake_backend})) as client:
        response = await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})
        assert response.status_code == 400
        assert "agentfarm secret set CLAUDE_CODE_OAUTH_TOKEN" in response.json()["error"]["message"]
        assert (await client.get("/api/runs")).json() == []
        # a stored secret is enough, and is never listed with its value
        put = await client.put(
            "/api/secrets/CLAUDE_CODE_OAUTH_TOKEN", json={"value": "oauth-token-abcdef"}
        )
        assert put.status_code == 204
        listing = await client.get("/api/secrets")
        assert listing.json() == {"names": ["CLAUDE_CODE_OAUTH_TOKEN"]}
        assert "oauth-token-abcdef" not in listing.text
        response = await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})
        assert response.status_code == 201
        run = await wait_terminal(client, response.json()["id"])
        assert run["status"] == "succeeded"
        assert fake_backend.secrets[run["id"]] == {"CLAUDE_CODE_OAUTH_TOKEN": "oauth-token-abcdef"}
        assert "oauth-token-abcdef" not in json.dumps(run)
        # Nor its digest (the run's credentials key is internal).
        assert "credentials_key" not in run["continuation"]
        assert "credentials_key" not in response.text
        assert (tmp_path / "d" / "secrets.json").stat().st_mode & 0o777 == 0o600
        assert (await client.put("/api/secrets/bad-name", json={"value": "x"})).status_code == 422
        assert (await client.delete("/api/secrets/NOPE")).status_code == 404


async def test_secrets_printed_by_the_agent_are_redacted(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    def leaky(run: models.Run, command: Any) -> list[Step]:
        steps = claude_like_script(run, command)
        leak = {"type": "assistant", "message": {"id": "m9", "content": [
            {"type": "text", "text": "the key is sk-test-secret-value-123!"}]}}  # fmt: skip
        steps.insert(2, Step("stdout", json.dumps(leak).encode()))
        steps.insert(2, Step("stderr", b"env: ANTHROPIC_API_KEY=sk-test-secret-value-123"))
        return steps

    fake_backend.script = leaky
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        await wait_terminal(client, run["id"])
        body = (await client.get(f"/api/runs/{run['id']}/events")).text
        assert "sk-test-secret-value-123" not in body
        assert "[redacted:ANTHROPIC_API_KEY]" in body


async def test_failed_launch_ends_failed_with_the_reason(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.fail_launch = "bubblewrap is not installed: apt-get install bubblewrap"
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        done = await wait_terminal(client, run["id"])
        assert done["status"] == "failed"
        assert "apt-get install bubblewrap" in done["error"]


def slow_script(run: models.Run, command: Any) -> list[Step]:
    steps = claude_like_script(run, command)
    return [*steps[:2], Step("stdout", b"{}", delay=60), *steps[2:]]


async def test_stop_a_running_run(app_client: AppFactory, fake_backend: FakeBackend) -> None:
    fake_backend.script = slow_script
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        await wait_running(client, run["id"])
        response = await client.post(f"/api/runs/{run['id']}/stop")
        assert response.status_code == 202
        done = await wait_terminal(client, run["id"])
        assert done["status"] == "stopped"
        again = await client.post(f"/api/runs/{run['id']}/stop")
        assert again.status_code == 409


async def test_queue_limit_and_stopping_a_queued_run(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.script = slow_script
    async with app_client(max_concurrent_runs=1) as client:
        first = (
            await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "a"}})
        ).json()
        second = (
            await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "b"}})
        ).json()
        await asyncio.sleep(0.2)
        assert (await client.get(f"/api/runs/{second['id']}")).json()["status"] == "queued"
        stopped = await client.post(f"/api/runs/{second['id']}/stop")
        assert stopped.status_code == 202
        assert (await wait_terminal(client, second["id"]))["status"] == "stopped"
        await client.post(f"/api/runs/{first['id']}/stop")
        assert (await wait_terminal(client, first["id"]))["status"] == "stopped"


async def read_sse(
    client: httpx.AsyncClient, run_id: str, headers: dict[str, str | bytes] | None = None
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with client.stream(
        "GET",
        f"/api/runs/{run_id}/events",
        headers={**AUTH, "Accept": "text/event-stream", **(headers or {})},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        current_id = None
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                current_id = int(line[3:].strip())
            elif line.startswith("event: end"):
                break
            elif line.startswith("data:") and current_id is not None:
                event = json.loads(line[5:])
                assert event["seq"] == current_id
                events.append(event)
                current_id = None
    return events


async def test_sse_streams_live_events_and_resumes(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    def paced(run: models.Run, command: Any) -> list[Step]:
        return [Step(s.kind, s.data, 0.05, s.exit) for s in claude_like_script(run, command)]

    fake_backend.script = paced
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        viewers = await asyncio.gather(*(read_sse(client, run["id"]) for _ in range(5)))
        stored = (await client.get(f"/api/runs/{run['id']}/events")).json()
        for seen in viewers:
            assert seen == stored
        assert stored[-1]["data"]["status"] == "succeeded"
        resumed = await read_sse(client, run["id"], {"Last-Event-ID": "3"})
        assert resumed == stored[3:]
        # Not a number we can use (latin-1 '²' passes str.isdigit(); too long for SQLite or
        # for int()): ignored, the stream starts from the beginning, never a 500.
        for odd in (b"\xb2", "9" * 30, "9" * 5000):
            assert await read_sse(client, run["id"], {"Last-Event-ID": odd}) == stored


async def test_an_agent_line_with_a_lone_surrogate_is_stored_and_served(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    # "\ud800" is valid JSON text but no UTF-8: the event is served with an ASCII escape.
    odd = (
        b'{"type":"assistant","message":{"id":"m9","content":[{"type":"text","text":"a\\ud800b"}]}}'
    )

    def script(run: models.Run, command: Any) -> list[Step]:
        steps = claude_like_script(run, command)
        return [*steps[:3], Step("stdout", odd), *steps[3:]]

    fake_backend.script = script
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        assert (await wait_terminal(client, run["id"]))["status"] == "succeeded"
        listed = await client.get(f"/api/runs/{run['id']}/events")
        assert listed.status_code == 200
        stored = listed.json()
        assert [e["data"]["text"] for e in stored if e["type"] == "agent.text"][-1] == "a\ud800b"
        assert await read_sse(client, run["id"]) == stored
        page = await client.get(f"/api/runs/{run['id']}/events", params={"before": 3})
        assert page.json() == stored[:2]


async def test_restart_reattaches_without_loss_or_duplicates(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    release = asyncio.Event()

    def gated(run: models.Run, command: Any) -> list[Step]:
        steps = claude_like_script(run, command)
        return [*steps[:3], Step("stdout", b"", delay=0.3), *steps[3:]]

    fake_backend.script = gated
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        await wait_running(client, run["id"])
    # the "server" is gone; the fake agent goes on and finishes on its own
    release.set()
    await asyncio.sleep(0.5)
    async with app_client() as client:
        done = await wait_terminal(client, run["id"])
        assert done["status"] == "succeeded"
        events = (await client.get(f"/api/runs/{run['id']}/events")).json()
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        kinds = [e["type"] for e in events]
        assert kinds.count("agent.init") == 1 and kinds.count("agent.result") == 1
        assert kinds.count("agent.text") == 1


async def test_agent_gone_while_down_ends_lost(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.script = slow_script
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        await wait_running(client, run["id"])
    fake_backend.lose(run["id"])
    async with app_client() as client:
        done = await wait_terminal(client, run["id"])
        assert done["status"] == "lost"
        assert "disappeared" in done["error"]


async def test_exit_without_result_fails_with_a_reason(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    def crash(run: models.Run, command: Any) -> list[Step]:
        steps = claude_like_script(run, command)[:2]
        return [
            *steps,
            Step("stderr", b"Segmentation fault"),
            Step("exit", exit=ExitInfo(exit_code=None, signal=9)),
        ]

    fake_backend.script = crash
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "p"}})).json()
        done = await wait_terminal(client, run["id"])
        assert done["status"] == "failed"
        assert "SIGKILL" in done["error"] or "signal 9" in done["error"]


async def test_openapi_is_served(app_client: AppFactory) -> None:
    async with app_client() as client:
        spec = (await client.get("/openapi.json")).json()
        assert "/api/runs/{run_id}/events" in spec["paths"]
        assert (await client.get("/docs")).status_code == 200
