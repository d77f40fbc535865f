"""Roles: admins manage users and see every API token; a token acts as its user, with that
user's role, may expire, and is deleted with its user."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from .web_helpers import PASSWORD, Cockpit, cockpit, login, page_csrf


async def new_token(browser: httpx.AsyncClient, name: str, days: str = "0") -> str:
    csrf = await page_csrf(browser, "/settings")
    made = await browser.post(
        "/settings/tokens", data={"name": name, "expires_days": days, "csrf_token": csrf}
    )
    assert made.status_code == 200, made.text
    secret: str = made.text.split('id="new-token" readonly value="')[1].split('"')[0]
    return secret


def bearer(cp: Cockpit, secret: str) -> httpx.AsyncClient:
    client = cp.browser()
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


async def test_the_first_user_is_admin_and_others_only_when_asked(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        await cp.add_user("ada")
        await cp.add_user("bob")
        made = await cp.api.post(
            "/api/admin/users", json={"name": "cy", "password": PASSWORD, "admin": True}
        )
        assert made.status_code == 201 and made.json()["admin"] is True
        listed = {u["name"]: u["admin"] for u in (await cp.api.get("/api/admin/users")).json()}
        assert listed == {"ada": True, "bob": False, "cy": True}
        for name, admin in (("bob", True), ("cy", False)):
            changed = await cp.api.put(f"/api/admin/users/{name}/role", json={"admin": admin})
            assert changed.status_code == 204
        listed = {u["name"]: u["admin"] for u in (await cp.api.get("/api/admin/users")).json()}
        assert listed == {"ada": True, "bob": True, "cy": False}
        missing = await cp.api.put("/api/admin/users/nobody/role", json={"admin": True})
        assert missing.status_code == 404


async def test_a_role_change_applies_to_a_live_token_at_once(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user("ada")
        await cp.add_user("bob")
        await login(browser, "bob")
        async with bearer(cp, await new_token(browser, "t")) as bob:
            assert (await bob.get("/api/admin/users")).status_code == 403
            await cp.api.put("/api/admin/users/bob/role", json={"admin": True})
            assert (await bob.get("/api/admin/users")).status_code == 200
            await cp.api.put("/api/admin/users/bob/role", json={"admin": False})
            assert (await bob.get("/api/admin/users")).status_code == 403


async def test_a_non_admins_token_cannot_administer_users(tmp_path: Path) -> None:
    # The reported hole: any cockpit user could mint a token that passed the admin API.
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user("ada")
        await cp.add_user("bob")
        await login(browser, "bob")
        async with bearer(cp, await new_token(browser, "bobs-laptop")) as bob:
            assert (await bob.get("/api/runs")).status_code == 200  # an ordinary user
            for method, path, body in (
                ("POST", "/api/admin/users", {"name": "mallory", "password": PASSWORD}),
                ("GET", "/api/admin/users", None),
                ("PUT", "/api/admin/users/ada/password", {"password": "taken over!"}),
                ("DELETE", "/api/admin/users/ada", None),
            ):
                refused = await bob.request(method, path, json=body)
                assert refused.status_code == 403, (method, path)
                assert "admin" in refused.json()["error"]["message"]
        names = [u["name"] for u in (await cp.api.get("/api/admin/users")).json()]
        assert names == ["ada", "bob"]
        async with cp.browser() as ada_browser:
            await login(ada_browser, "ada")
            async with bearer(cp, await new_token(ada_browser, "adas-laptop")) as ada:
                made = await ada.post("/api/admin/users", json={"name": "cy", "password": PASSWORD})
                assert made.status_code == 201


async def test_tokens_die_with_their_user_and_roles_apply_at_once(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user("ada")
        await cp.add_user("bob")
        await login(browser, "bob")
        secret = await new_token(browser, "ci")
        async with bearer(cp, secret) as bob:
            assert (await bob.get("/api/runs")).status_code == 200
            assert (await cp.api.delete("/api/admin/users/bob")).status_code == 204
            assert (await bob.get("/api/runs")).status_code == 401
        with sqlite3.connect(tmp_path / "agentfarm.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM api_tokens").fetchone() == (0,)


async def test_tokens_can_expire(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user("ada")
        await login(browser, "ada")
        csrf = await page_csrf(browser, "/settings")
        odd = await browser.post(
            "/settings/tokens", data={"name": "x", "expires_days": "3", "csrf_token": csrf}
        )
        assert odd.status_code == 422 and "lifetime" in odd.text
        secret = await new_token(browser, "week", days="7")
        assert "expires " in (await browser.get("/settings")).text
        async with bearer(cp, secret) as client:
            assert (await client.get("/api/runs")).status_code == 200
            with sqlite3.connect(tmp_path / "agentfarm.db") as conn:
                (stored,) = conn.execute("SELECT expires_at FROM api_tokens").fetchone()
                assert stored is not None
                conn.execute("UPDATE api_tokens SET expires_at = '2020-01-01T00:00:00+00:00'")
            expired = await client.get("/api/runs")
            assert expired.status_code == 401 and expired.json()["error"]["code"] == "unauthorized"
        assert "<strong>expired</strong>" in (await browser.get("/settings")).text


async def test_only_admins_see_and_revoke_every_token(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as ada, cp.browser() as bob:
        await cp.add_user("ada")
        await cp.add_user("bob")
        await login(ada, "ada")
        await login(bob, "bob")
        await new_token(ada, "adas-token")
        await new_token(bob, "bobs-token")
        bobs_view = (await bob.get("/settings")).text
        assert "bobs-token" in bobs_view and "adas-token" not in bobs_view
        adas_view = (await ada.get("/settings")).text
        assert "bobs-token" in adas_view and "adas-token" in adas_view and "of bob" in adas_view
        with sqlite3.connect(tmp_path / "agentfarm.db") as conn:
            ids = dict(conn.execute("SELECT name, id FROM api_tokens").fetchall())
        csrf = await page_csrf(bob, "/settings")
        theirs = await bob.post(
            f"/settings/tokens/{ids['adas-token']}/revoke", data={"csrf_token": csrf}
        )
        assert theirs.status_code == 404
        csrf = await page_csrf(ada, "/settings")
        revoked = await ada.post(
            f"/settings/tokens/{ids['bobs-token']}/revoke", data={"csrf_token": csrf}
        )
        assert revoked.status_code == 303
        assert "bobs-token" not in (await bob.get("/settings")).text


async def test_a_token_belongs_to_a_user_account(tmp_path: Path) -> None:
    # The primary token has no account: it cannot mint named tokens through the settings page.
    async with cockpit(tmp_path) as cp:
        refused = await cp.api.post("/settings/tokens", data={"name": "x"})
        assert refused.status_code == 422 and "belong to a cockpit user" in refused.text
