"""Cockpit access: password logins and sessions, CSRF, failed-login limits, named API tokens
(hashed), the bearer check, and the opt-in trusted forward-auth proxy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agentfarm.store.users import digest
from agentfarm.web import csrf
from agentfarm.web.loginlimit import FailureWindow, LoginLimiter

from .web_helpers import PASSWORD, cockpit, csrf_of, login, page_csrf


async def test_pages_redirect_to_login_and_the_api_says_401(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        for path in ("/", "/configs", "/configs/new", "/settings", "/runs/0123456789ab", "/runs/x"):
            response = await browser.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login?next=")
        assert (await browser.get("/api/runs")).status_code == 401
        assert (await browser.get("/api/runs/x")).status_code == 401  # auth before the id
        live = await browser.get("/dashboard/live", headers={"HX-Request": "true"})
        assert live.status_code == 401 and live.headers["hx-redirect"].startswith("/login")
        assert live.json()["error"]["code"] == "unauthorized"
        assert (await browser.post("/configs/new", data={"name": "x"})).status_code == 303
        # The static shell is public: the login page needs its stylesheet.
        assert (await browser.get("/static/cockpit.css")).status_code == 200
        assert (await browser.get("/manifest.webmanifest")).json()["display"] == "standalone"


async def test_login_sets_a_hardened_session_cookie_and_logout_ends_it(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        response = await login(browser)
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("af_session=")
        )
        lowered = cookie.lower()
        assert "httponly" in lowered and "samesite=lax" in lowered and "path=/" in lowered
        assert "secure" not in lowered  # plain http on loopback
        home = await browser.get("/")
        assert home.status_code == 200 and "Runs" in home.text and "ada" in home.text
        # The JSON API accepts the browser session too (the run page uses it).
        assert (await browser.get("/api/runs")).status_code == 200
        # Only the hash of the cookie is stored.
        value = browser.cookies["af_session"]
        with sqlite3.connect(tmp_path / "agentfarm.db") as conn:
            stored = [r[0] for r in conn.execute("SELECT token_hash FROM sessions")]
        assert stored == [digest(value)] and value not in stored
        token = await page_csrf(browser, "/")
        out = await browser.post("/logout", data={"csrf_token": token})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert (await browser.get("/")).status_code == 303
        browser.cookies.set("af_session", value)  # replaying the old cookie does not help
        assert (await browser.get("/")).status_code == 303


async def test_wrong_password_and_unknown_user_look_the_same(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        wrong = await login(browser, password="not the password")
        unknown = await login(browser, name="nobody")
        assert wrong.status_code == unknown.status_code == 401
        assert "Wrong user name or password" in wrong.text
        assert "af_session" not in browser.cookies


async def test_cookies_are_secure_behind_a_trusted_tls_proxy_only(tmp_path: Path) -> None:
    # The session cookie is set by the same helper; the login form's cookie shows the rule.
    async with cockpit(tmp_path, trusted_proxies="10.0.0.5") as cp:
        for address, secure in (("10.0.0.5", True), ("10.0.0.9", False)):
            async with cp.browser(address) as browser:
                response = await browser.get("/login", headers={"X-Forwarded-Proto": "https"})
                cookie = response.headers["set-cookie"].lower()
                assert cookie.startswith("af_pre=") and "samesite=strict" in cookie
                assert ("secure" in cookie) is secure, address


async def test_login_needs_its_csrf_token(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await browser.get("/login")
        for token in ("", "forged"):
            response = await browser.post(
                "/login", data={"username": "ada", "password": PASSWORD, "csrf_token": token}
            )
            assert response.status_code == 403
            assert "af_session" not in browser.cookies


async def test_state_changing_forms_and_api_calls_need_the_csrf_token(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        form = {"name": "demo", "repo": "/srv/repo", "prompt": "go", "permission_mode": "default",
                "backend": "local", "sandbox_mode": "bwrap"}  # fmt: skip
        for token in (None, "forged", csrf.token_for(b"another key", "whatever")):
            data = form if token is None else {**form, "csrf_token": token}
            response = await browser.post("/configs/new", data=data)
            assert response.status_code == 403, token
            assert "CSRF" in response.text
        # The JSON API with the cookie but without the header: refused too.
        api = await browser.post("/api/configs", json={"name": "x", "repo": "/r"})
        assert api.status_code == 403
        assert (await cp.api.get("/api/configs")).json() == []
        token = await page_csrf(browser)
        created = await browser.post("/configs/new", data={**form, "csrf_token": token})
        assert created.status_code == 303
        api = await browser.post(
            "/api/configs", json={"name": "x", "repo": "/r"}, headers={"X-CSRF-Token": token}
        )
        assert api.status_code == 201
        # Another user's token does not work for this session.
        async with cp.browser() as other:
            await cp.add_user("bob")
            await login(other, "bob")
            theirs = await page_csrf(other)
        assert theirs != token
        refused = await browser.post("/configs/new", data={**form, "csrf_token": theirs})
        assert refused.status_code == 403


async def test_failed_logins_are_limited_per_user_and_per_address(tmp_path: Path) -> None:
    async with cockpit(tmp_path, login_failures_per_user=3, login_failures_per_address=5) as cp:
        await cp.add_user()
        await cp.add_user("bob")
        async with cp.browser("192.0.2.1") as attacker:
            for _ in range(3):
                assert (await login(attacker, password="guess-guess")).status_code == 401
            limited = await login(attacker)  # even the right password now waits
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
        async with cp.browser("192.0.2.2") as elsewhere:  # per user: from anywhere
            assert (await login(elsewhere)).status_code == 429
            assert (await login(elsewhere, "bob")).status_code == 303
        async with cp.browser("192.0.2.1") as attacker:  # per address: any user
            for _ in range(2):
                assert (await login(attacker, "bob", password="guess-guess")).status_code == 401
            assert (await login(attacker, "bob")).status_code == 429


def test_failure_window_slides() -> None:
    now = [0.0]
    window = FailureWindow(2, window=60, clock=lambda: now[0])
    window.fail("k")
    window.fail("k")
    assert window.retry_after("k") == 60
    now[0] = 30
    assert window.retry_after("k") == 30
    now[0] = 60.5
    assert window.retry_after("k") == 0
    limiter = LoginLimiter(1, 10, clock=lambda: now[0])
    limiter.failed("Ada", "a")
    assert limiter.retry_after("ada", "b") > 0  # user names compare case-insensitively
    limiter.succeeded("ADA")
    assert limiter.retry_after("ada", "b") == 0


async def test_named_tokens_are_shown_once_hashed_and_revocable(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        token = await page_csrf(browser, "/settings")
        created = await browser.post(
            "/settings/tokens", data={"name": "laptop", "csrf_token": token}
        )
        assert created.status_code == 200
        secret = created.text.split('id="new-token" readonly value="')[1].split('"')[0]
        assert secret.startswith("afn_")
        listing = await browser.get("/settings")
        assert "laptop" in listing.text and secret not in listing.text
        with sqlite3.connect(tmp_path / "agentfarm.db") as conn:
            rows = conn.execute("SELECT id, token_hash FROM api_tokens").fetchall()
        assert rows[0][1] == digest(secret)
        token_id = rows[0][0]
        async with cp.browser() as cli:
            cli.headers["Authorization"] = f"Bearer {secret}"
            assert (await cli.get("/api/runs")).status_code == 200
            # A bearer token carries no ambient credentials: no CSRF token needed.
            made = await cli.post("/api/configs", json={"name": "t", "repo": "/r"})
            assert made.status_code == 201
            # But it cannot open a page's forms without one either (pages need a browser).
            assert "used" in (await browser.get("/settings")).text
            revoked = await browser.post(
                f"/settings/tokens/{token_id}/revoke", data={"csrf_token": token}
            )
            assert revoked.status_code == 303
            assert (await cli.get("/api/runs")).status_code == 401
        # The primary token keeps working.
        assert (await cp.api.get("/api/runs")).status_code == 200


async def test_user_admin_is_for_bearer_tokens_only(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()  # the first user: an admin, but signed in with a cookie here
        await login(browser)
        token = await page_csrf(browser)
        refused = await browser.post(
            "/api/admin/users",
            json={"name": "mallory", "password": "password123"},
            headers={"X-CSRF-Token": token},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert (await cp.api.post("/api/admin/users", json={})).status_code == 422
        assert (await browser.get("/api/admin/users")).status_code == 403
        dup = await cp.api.post("/api/admin/users", json={"name": "ada", "password": PASSWORD})
        assert dup.status_code == 409
        short = await cp.api.post("/api/admin/users", json={"name": "eve", "password": "short"})
        assert short.status_code == 422
        names = [u["name"] for u in (await cp.api.get("/api/admin/users")).json()]
        assert names == ["ada"]
        changed = await cp.api.put(
            "/api/admin/users/ada/password", json={"password": "another password"}
        )
        assert changed.status_code == 204
        assert (await browser.get("/")).status_code == 303  # signed out everywhere
        assert (await login(browser, password="another password")).status_code == 303


@pytest.mark.parametrize(
    ("address", "trusted"),
    [("10.1.2.3", True), ("10.9.9.9", False), ("127.0.0.1", False)],
)
async def test_forward_auth_header_only_from_trusted_proxies(
    tmp_path: Path, address: str, trusted: bool
) -> None:
    async with (
        cockpit(tmp_path, trusted_proxies="10.1.2.0/24", forward_auth_header="Remote-User") as cp,
        cp.browser(address) as browser,
    ):
        browser.headers["Remote-User"] = "grace"
        home = await browser.get("/")
        if not trusted:
            assert home.status_code == 303  # the forged header is ignored
            assert (await browser.get("/api/runs")).status_code == 401
            return
        assert home.status_code == 200 and "grace" in home.text
        token = csrf_of(home.text)
        form = {"name": "p", "repo": "/r", "prompt": "x", "permission_mode": "default",
                "backend": "local", "sandbox_mode": "bwrap"}  # fmt: skip
        assert (await browser.post("/configs/new", data=form)).status_code == 403
        # Without an account of that name grace is no admin: config changes need the scope.
        made = await browser.post("/configs/new", data={**form, "csrf_token": token})
        assert made.status_code == 403 and "missing scope `admin`" in made.text
        await cp.add_user("grace")  # the first account: an admin
        made = await browser.post("/configs/new", data={**form, "csrf_token": token})
        assert made.status_code == 303


async def test_a_duplicated_forward_auth_header_is_not_believed(tmp_path: Path) -> None:
    # A proxy that appends its header to the client's instead of replacing it would let the
    # client's copy (the first) name the user: two copies name nobody.
    async with (
        cockpit(tmp_path, trusted_proxies="10.1.2.3", forward_auth_header="Remote-User") as cp,
        cp.browser("10.1.2.3") as browser,
    ):
        await cp.add_user("ada")  # the first account: admin
        twice = [("Remote-User", "ada"), ("remote-user", "grace")]
        assert (await browser.get("/", headers=twice)).status_code == 303
        assert (await browser.get("/api/runs", headers=twice)).status_code == 401
        once = [("Remote-User", "grace")]
        assert (await browser.get("/api/runs", headers=once)).status_code == 200


async def test_forward_auth_is_off_by_default(tmp_path: Path) -> None:
    async with (
        cockpit(tmp_path, trusted_proxies="10.1.2.0/24") as cp,
        cp.browser("10.1.2.3") as browser,
    ):
        browser.headers["Remote-User"] = "grace"
        assert (await browser.get("/")).status_code == 303


async def test_client_address_behind_proxies_is_the_nearest_untrusted_hop(tmp_path: Path) -> None:
    async with cockpit(tmp_path, trusted_proxies="10.0.0.0/8", login_failures_per_address=1) as cp:
        await cp.add_user()
        async with cp.browser("10.0.0.1") as proxy:
            proxy.headers["X-Forwarded-For"] = "203.0.113.7, 10.0.0.2"
            assert (await login(proxy, "nobody", password="guess-guess")).status_code == 401
            assert (await login(proxy, "other", password="guess-guess")).status_code == 429
            proxy.headers["X-Forwarded-For"] = "203.0.113.8"
            assert (await login(proxy)).status_code == 303


@pytest.mark.parametrize(
    ("presented", "believed"),
    [(None, False), ("wrong-secret", False), ("", False), ("proxy-shared-secret", True)],
)
async def test_forward_auth_with_a_proxy_secret_needs_the_secret(
    tmp_path: Path, presented: str | None, believed: bool
) -> None:
    # A proxy on loopback: any local process is a "trusted" peer, so only the secret tells
    # the proxy's requests apart.
    async with (
        cockpit(
            tmp_path,
            trusted_proxies="127.0.0.1",
            forward_auth_header="Remote-User",
            forward_auth_secret="proxy-shared-secret",
        ) as cp,
        cp.browser("127.0.0.1") as browser,
    ):
        browser.headers["Remote-User"] = "grace"
        if presented is not None:
            browser.headers["X-Agentfarm-Proxy-Secret"] = presented
        home = await browser.get("/")
        api = await browser.get("/api/runs")
        if believed:
            assert home.status_code == 200 and "grace" in home.text
            assert api.status_code == 200
        else:
            assert home.status_code == 303
            assert api.status_code == 401 and api.json()["error"]["code"] == "unauthorized"


async def test_a_forward_auth_user_has_the_role_of_their_account(tmp_path: Path) -> None:
    async with cockpit(
        tmp_path, trusted_proxies="10.1.2.3", forward_auth_header="Remote-User"
    ) as cp:
        await cp.add_user("ada")  # the first account: admin
        await cp.add_user("bob")
        for name, admin in (("ada", True), ("bob", False), ("nobody", False)):
            async with cp.browser("10.1.2.3") as browser:
                browser.headers["Remote-User"] = name
                page = (await browser.get("/settings")).text
                assert (f"<strong>{name}</strong> (admin)" in page) is admin, name


@pytest.mark.parametrize(
    ("proxies", "secret", "risky"),
    [
        ("127.0.0.1", None, True),
        ("0.0.0.0/0", None, True),
        ("::1", None, True),
        ("127.0.0.1", "s3cret-value", False),
        ("10.1.2.3", None, False),
    ],
)
def test_forward_auth_from_loopback_without_a_secret_is_called_unsafe(
    tmp_path: Path, proxies: str, secret: str | None, risky: bool
) -> None:
    from agentfarm.web.identity import forward_auth_risk

    from .conftest import make_settings

    settings = make_settings(
        tmp_path,
        trusted_proxies=proxies,
        forward_auth_header="Remote-User",
        forward_auth_secret=secret,
    )
    assert (forward_auth_risk(settings) is not None) is risky
    assert forward_auth_risk(make_settings(tmp_path, trusted_proxies=proxies)) is None


def test_importing_the_app_and_the_cli_hashes_nothing() -> None:
    # The timing equaliser's argon2 hash is made on the first login, not at import: every CLI
    # command and every test that imports the app would pay for it.
    import subprocess
    import sys

    probe = (
        "import argon2\n"
        "calls = []\n"
        "real = argon2.PasswordHasher.hash\n"
        "def counted(self, *a, **k):\n    calls.append(1)\n    return real(self, *a, **k)\n"
        "argon2.PasswordHasher.hash = counted\n"
        "import agentfarm.web.app, agentfarm.cli.main\n"
        "assert calls == [], calls\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
