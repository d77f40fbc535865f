"""The generic command agent through the API, over the fake backend."""

from __future__ import annotations

from typing import Any

from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import launch, models

from .conftest import AppFactory
from .test_api import wait_running, wait_terminal

SPEC = {"repo": "/r", "prompt": "p", "agent": "command", "command": {"argv": ["sh", "-c", "x"]}}


def lines_then(code: int, *, delay: float = 0.0) -> Any:
    def script(run: models.Run, command: launch.AgentCommand) -> list[Step]:
        return [
            Step("started", b'{"pid": 0}'),
            Step("stdout", b"hello"),
            Step("stderr", b"careful", delay=delay),
            Step("exit", exit=ExitInfo(exit_code=code)),
        ]

    return script


async def test_a_command_run_gets_no_model_credentials_and_shows_its_lines(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.script = lines_then(0)
    async with app_client() as client:
        response = await client.post("/api/runs", json={"spec": SPEC})
        assert response.status_code == 201, response.text
        run = await wait_terminal(client, response.json()["id"])
        assert run["status"] == "succeeded" and run["spec"]["agent"] == "command"
        assert fake_backend.secrets[run["id"]] == {}
        events = (await client.get(f"/api/runs/{run['id']}/events")).json()
        kinds = [(e["type"], e["data"]) for e in events if e["type"].startswith("agent.")]
        assert kinds == [("agent.text", {"text": "hello"}), ("agent.stderr", {"line": "careful"})]


async def test_a_failing_command_fails_with_its_exit_code(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.script = lines_then(7)
    async with app_client() as client:
        response = await client.post("/api/runs", json={"spec": SPEC})
        run = await wait_terminal(client, response.json()["id"])
        assert run["status"] == "failed" and "code 7" in run["error"]


async def test_follow_ups_are_refused_with_409(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.script = lines_then(0, delay=60)
    async with app_client() as client:
        run = (await client.post("/api/runs", json={"spec": SPEC})).json()
        await wait_running(client, run["id"])
        sent = await client.post(f"/api/runs/{run['id']}/messages", json={"text": "more"})
        assert sent.status_code == 409
        assert "takes no follow-up" in sent.json()["error"]["message"]
        assert (await client.post(f"/api/runs/{run['id']}/stop")).status_code == 202
        assert (await wait_terminal(client, run["id"]))["status"] == "stopped"


async def test_a_config_without_its_command_is_a_422_naming_the_field(
    app_client: AppFactory,
) -> None:
    async with app_client() as client:
        body = {"name": "c", "repo": "/r", "agent": "command"}
        response = await client.post("/api/configs", json=body)
        assert response.status_code == 422
        fields = [f["field"] for f in response.json()["error"]["fields"]]
        assert "command" in fields, fields
        bad = {**body, "command": {"argv": []}}
        fields = [
            f["field"]
            for f in (await client.post("/api/configs", json=bad)).json()["error"]["fields"]
        ]
        assert any(f.startswith("command") for f in fields), fields
        ok = await client.post("/api/configs", json={**body, "command": {"argv": ["make"]}})
        assert ok.status_code == 201, ok.text
        assert ok.json()["command"] == {"argv": ["make"], "prompt": "stdin"}
