"""The Host-header allow-list against DNS rebinding: a name re-pointed at the server is
refused; loopback names, address literals and the configured names pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.types import Message

from agentfarm.settings import Settings
from agentfarm.web.hosts import HostAllowList, host_name

from .conftest import make_settings
from .web_helpers import cockpit


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8080", "localhost"),
        ("LocalHost.", "localhost"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("farm.example.org:443", "farm.example.org"),
    ],
)
def test_host_name_drops_port_brackets_case_and_the_root_dot(header: str, name: str) -> None:
    assert host_name(header) == name


async def test_a_rebound_name_is_refused_everywhere_but_loopback_passes(tmp_path: Path) -> None:
    # No extra names configured: the defaults alone.
    async with cockpit(tmp_path, allowed_hosts="") as cp:
        for path in ("/api/runs", "/api/health", "/login", "/static/cockpit.css", "/nope"):
            refused = await cp.api.get(path, headers={"Host": "evil.example:8080"})
            assert refused.status_code == 421, path
            error = refused.json()["error"]
            assert error["code"] == "host_not_allowed"
            assert "evil.example" in error["message"]
            assert "AGENTFARM_ALLOWED_HOSTS" in error["message"]
        # httpx's default `testserver` is just another unknown name.
        assert (await cp.api.get("/api/runs")).status_code == 421
        for host in (
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "app.localhost",
            "10.1.2.3:8080",  # an address: what kubelet probes and LAN users send
        ):
            ok = await cp.api.get("/api/runs", headers={"Host": host})
            assert ok.status_code == 200, host


async def test_the_public_name_and_listed_names_are_accepted(tmp_path: Path) -> None:
    async with cockpit(
        tmp_path, allowed_hosts="ci.internal, other.example", public_url="https://Farm.Example.org"
    ) as cp:
        for host in ("farm.example.org", "FARM.example.org:443", "ci.internal", "other.example"):
            assert (await cp.api.get("/api/runs", headers={"Host": host})).status_code == 200
        assert (await cp.api.get("/api/runs", headers={"Host": "example.org"})).status_code == 421


async def test_a_star_turns_the_check_off(tmp_path: Path) -> None:
    async with cockpit(tmp_path, allowed_hosts="*") as cp:
        assert (await cp.api.get("/api/runs", headers={"Host": "any.example"})).status_code == 200


async def test_a_request_without_host_is_refused() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("the app must not see it")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    guard = HostAllowList(app, Settings.model_validate({"data_dir": "/nonexistent"}))
    await guard({"type": "http", "headers": []}, receive, send)
    assert sent[0]["status"] == 400
    assert b"no Host header" in sent[1]["body"]


@pytest.mark.parametrize("entry", ["http://farm.example", "farm.example:8080", "a/b", "a b"])
def test_allowed_hosts_takes_names_only(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ValidationError, match="not a host name"):
        make_settings(tmp_path, allowed_hosts=entry)


def test_public_url_must_be_a_plain_url(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        make_settings(tmp_path, public_url="farm.example.org")
    settings = make_settings(tmp_path, public_url="https://Farm.Example.org/")
    assert settings.public_host == "farm.example.org"
