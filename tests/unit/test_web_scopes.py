"""API token scopes (read < operate < admin), bounded by the token's user's role and enforced
in one place for the API and the cockpit: 403 naming the missing scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from agentfarm.domain import scopes

from .test_web_roles import bearer, new_token
from .web_helpers import Cockpit, cockpit, login, page_csrf

CONFIG = {"name": "demo", "repo": "/srv/repo", "prompt": "fix the bug"}


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/api/runs", "read"),
        ("GET", "/api/runs/abc/events", "read"),
        ("GET", "/runs/abc", "read"),
        ("POST", "/api/runs", "operate"),
        ("POST", "/api/runs/abc/stop", "operate"),
        ("POST", "/api/runs/abc/messages", "operate"),
        ("POST", "/api/orchestration/dispatch", "operate"),
        ("POST", "/api/pipeline/pause", "operate"),
        ("POST", "/configs/demo/launch", "operate"),
        ("GET", "/api/configs", "read"),
        ("POST", "/api/configs", "admin"),
        ("PUT", "/api/configs/demo", "admin"),
        ("DELETE", "/api/configs/demo", "admin"),
        ("POST", "/configs/new", "admin"),
        ("POST", "/configs/demo/edit", "admin"),
        ("GET", "/api/secrets", "admin"),
        ("PUT", "/api/secrets/x", "admin"),
        ("GET", "/api/admin/users", "admin"),
        ("GET", "/api/forges", "admin"),
        ("POST", "/api/forges/gh/test", "admin"),
        ("POST", "/api/notifications/test", "admin"),
        ("POST", "/settings/notifications/test", "admin"),
        ("GET", "/api/notifications", "read"),
        ("POST", "/api/push/subscriptions", "operate"),
        ("DELETE", "/api/push/subscriptions", "operate"),
        ("GET", "/api/secretsxyz", "read"),  # a path boundary, not a prefix of a word
    ],
)
def test_the_scope_a_request_needs(method: str, path: str, needed: str) -> None:
    assert scopes.required(method, path) == needed


def test_scopes_include_the_lower_ones_and_unknown_names_are_refused() -> None:
    assert scopes.closure(["operate"]) == {"read", "operate"}
    assert scopes.closure(["admin"]) == scopes.ALL
    assert scopes.closure([]) == frozenset()
    with pytest.raises(ValueError, match="unknown scope 'root'"):
        scopes.closure(["root"])
    assert scopes.parse("read, operate,bogus") == {"read", "operate"}
    assert scopes.dump({"admin", "read"}) == "read,admin"


async def api_token(cp: Cockpit, user: str, *chosen: str) -> str:
    body: dict[str, Any] = {"name": f"{user}-{'-'.join(chosen) or 'default'}", "user": user}
    if chosen:
        body["scopes"] = list(chosen)
    made = await cp.api.post("/api/tokens", json=body)
    assert made.status_code == 201, made.text
    secret: str = made.json()["token"]
    return secret


def refused(response: httpx.Response, scope: str) -> bool:
    message: str = response.json()["error"]["message"]
    return response.status_code == 403 and f"missing scope `{scope}`" in message


async def test_a_read_token_reads_but_does_not_operate(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        await cp.add_user("ada")
        assert (await cp.api.post("/api/configs", json=CONFIG)).status_code == 201
        async with bearer(cp, await api_token(cp, "ada", "read")) as reader:
            assert (await reader.get("/api/runs")).status_code == 200
            assert (await reader.get("/api/configs/demo")).status_code == 200
            launch = await reader.post("/api/runs", json={"config": "demo"})
            assert refused(launch, "operate"), launch.text
            assert "--scope operate" in launch.json()["error"]["message"]
            assert refused(await reader.get("/api/secrets"), "admin")
            assert refused(await reader.post("/api/tokens", json={"name": "more"}), "operate")
        assert (await cp.api.get("/api/runs")).json() == []  # nothing was launched


async def test_an_operate_token_launches_but_does_not_administer(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        await cp.add_user("ada")  # an admin: the role is not what limits this token
        assert (await cp.api.post("/api/configs", json=CONFIG)).status_code == 201
        async with bearer(cp, await api_token(cp, "ada", "operate")) as operator:
            launched = await operator.post("/api/runs", json={"config": "demo"})
            assert launched.status_code == 201, launched.text
            run_id = launched.json()["id"]
            assert (await operator.get(f"/api/runs/{run_id}")).status_code == 200
            for method, path, body in (
                ("PUT", "/api/secrets/TOKEN", {"value": "x"}),
                ("POST", "/api/configs", {**CONFIG, "name": "other"}),
                ("DELETE", "/api/configs/demo", None),
                ("GET", "/api/admin/users", None),
            ):
                response = await operator.request(method, path, json=body)
                assert refused(response, "admin"), (method, path, response.text)
            grab = await operator.post("/api/tokens", json={"name": "x", "scopes": ["admin"]})
            assert grab.status_code == 403 and "cannot grant the `admin` scope" in grab.text
        async with bearer(cp, await api_token(cp, "ada", "admin")) as admin:
            assert (await admin.put("/api/secrets/TOKEN", json={"value": "x"})).status_code == 204
            assert (await admin.get("/api/admin/users")).status_code == 200


async def test_a_one_off_spec_naming_a_git_token_secret_needs_admin(tmp_path: Path) -> None:
    """Otherwise anyone who may launch could send any stored secret to a host they choose."""
    spec = {
        "repo": "https://evil.example/x/y.git",
        "prompt": "p",
        "git_token_secret": "GITHUB_TOKEN",
    }
    async with cockpit(tmp_path) as cp:
        await cp.add_user("ada")
        async with bearer(cp, await api_token(cp, "ada", "operate")) as operator:
            for path, body in (
                ("/api/runs", {"spec": spec}),
                ("/api/orchestration/dispatch", {"spec": spec, "idempotency_key": "k1"}),
            ):
                response = await operator.post(path, json=body)
                assert response.status_code == 403, response.text
                error = response.json()["error"]
                assert error["code"] == "forbidden" and "git_token_secret" in error["message"]
            plain = await operator.post(
                "/api/runs", json={"spec": {**spec, "git_token_secret": None}}
            )
            assert plain.status_code == 201, plain.text
        async with bearer(cp, await api_token(cp, "ada", "admin")) as admin:
            allowed = await admin.post("/api/runs", json={"spec": spec})
            assert allowed.status_code != 403, allowed.text  # past the scope check


async def test_a_users_role_bounds_their_tokens_and_sessions(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user("ada")
        await cp.add_user("bob")  # not an admin: read and operate
        too_much = await cp.api.post(
            "/api/tokens", json={"name": "x", "user": "bob", "scopes": ["admin"]}
        )
        assert too_much.status_code == 422 and "bob is not an admin" in too_much.text
        made = await cp.api.post("/api/tokens", json={"name": "ci", "user": "bob"})
        assert made.json()["scopes"] == ["read", "operate"] and made.json()["user"] == "bob"
        async with bearer(cp, made.json()["token"]) as bob:
            assert refused(await bob.put("/api/secrets/x", json={"value": "v"}), "admin")
            other = await bob.post("/api/tokens", json={"name": "y", "user": "ada"})
            assert other.status_code == 403 and "only an admin" in other.text
            own = await bob.post("/api/tokens", json={"name": "mine", "scopes": ["read"]})
            assert own.status_code == 201 and own.json()["scopes"] == ["read"]
            listed = (await bob.get("/api/tokens")).json()
            assert {t["name"] for t in listed} == {"ci", "mine"}
        # A token made with every scope for a user who is an admin loses admin with the role.
        await cp.api.put("/api/admin/users/bob/role", json={"admin": True})
        async with bearer(cp, await api_token(cp, "bob", "admin")) as bob_admin:
            assert (await bob_admin.get("/api/secrets")).status_code == 200
            await cp.api.put("/api/admin/users/bob/role", json={"admin": False})
            assert refused(await bob_admin.get("/api/secrets"), "admin")
        # The cockpit: bob's session may launch but not change configs.
        await login(browser, "bob")
        assert "New config" not in (await browser.get("/configs")).text
        csrf = await page_csrf(browser, "/configs")
        edit = await browser.post(
            "/configs/new", data={"name": "x", "prompt": "p", "csrf_token": csrf}
        )
        assert refused(edit, "admin"), edit.text


async def test_tokens_over_the_api_list_and_revoke(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        await cp.add_user("ada")
        own = await cp.api.post("/api/tokens", json={"name": "mine"})
        assert own.status_code == 422 and "name one with `user`" in own.text
        made = (await cp.api.post("/api/tokens", json={"name": "t", "user": "ada"})).json()
        assert made["scopes"] == ["read", "operate", "admin"] and made["token"].startswith("afn_")
        listed = (await cp.api.get("/api/tokens")).json()
        assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]
        assert (await cp.api.delete(f"/api/tokens/{made['id']}")).status_code == 204
        async with bearer(cp, made["token"]) as gone:
            assert (await gone.get("/api/runs")).status_code == 401
        missing = await cp.api.delete(f"/api/tokens/{made['id']}")
        assert missing.status_code == 404


async def test_the_settings_page_makes_tokens_with_a_scope(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user("ada")
        await cp.add_user("bob")
        await login(browser, "bob")
        page = (await browser.get("/settings")).text
        assert 'value="operate"' in page and 'value="admin"' not in page  # bob's role
        csrf = await page_csrf(browser, "/settings")
        beyond = await browser.post(
            "/settings/tokens",
            data={"name": "x", "expires_days": "0", "scope": "admin", "csrf_token": csrf},
        )
        assert beyond.status_code == 422 and "choose the token&#39;s scope" in beyond.text
        made = await browser.post(
            "/settings/tokens",
            data={"name": "ro", "expires_days": "0", "scope": "read", "csrf_token": csrf},
        )
        assert made.status_code == 200 and "scope read" in made.text
        secret = made.text.split('id="new-token" readonly value="')[1].split('"')[0]
        async with bearer(cp, secret) as reader:
            assert (await reader.get("/api/runs")).status_code == 200
            assert refused(await reader.post("/api/runs", json={"config": "x"}), "operate")
        default = await new_token(browser, "default")  # no scope chosen: all bob's role allows
        async with bearer(cp, default) as bob:
            assert refused(await bob.get("/api/secrets"), "admin")
            assert (await bob.post("/api/runs", json={"config": "nope"})).status_code == 422
