"""Notifications through the API and the settings page: the targets shown by scheme and host
only, the "send a test" button (admins), and Web Push: a browser's subscription stored, a push
encrypted for it arriving at a loopback push service, a gone subscription removed."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
from pathlib import Path

import http_ece
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentfarm.store.secrets import SecretStore
from tests.fakes.json_endpoint import JsonEndpoint

from .test_web_roles import bearer, new_token
from .test_web_scopes import api_token
from .web_helpers import cockpit, login, page_csrf

SECRET_PATH = "/hook/very-secret-token-123"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Browser:
    """A browser's side of Web Push: its key pair and auth secret, and decryption."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    def subscription(self, endpoint: str) -> dict[str, object]:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"endpoint": endpoint, "expirationTime": None,
                "keys": {"p256dh": b64(public), "auth": b64(self.auth)}}  # fmt: skip

    def decrypt(self, body: bytes) -> dict[str, object]:
        plain = http_ece.decrypt(
            body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"
        )
        found: dict[str, object] = json.loads(plain)
        return found


async def test_targets_are_listed_by_scheme_and_host_and_a_test_reaches_them(
    tmp_path: Path, endpoint: JsonEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = JsonEndpoint()
    dead_url = dead.url("/dead/dead-secret-token-456")
    dead.close()  # nothing listens there any more
    SecretStore(tmp_path / "secrets.json").set(
        "NOTIFY_URLS", f"{endpoint.url(SECRET_PATH)} {dead_url}"
    )
    async with cockpit(tmp_path, notify_urls=endpoint.url("/farm")) as cp:
        listed = await cp.api.get("/api/notifications")
        assert listed.status_code == 200
        body = listed.json()
        assert body["targets"] == [
            {"target": "json://127.0.0.1", "source": "AGENTFARM_NOTIFY_URLS"},
            {"target": "json://127.0.0.1", "source": "NOTIFY_URLS"},
            {"target": "json://127.0.0.1", "source": "NOTIFY_URLS"},
        ]
        assert "run_stopped" not in body["events"]
        tested = await cp.api.post("/api/notifications/test")
        assert tested.status_code == 200, tested.text
        result = tested.json()
        assert (result["sent"], result["failed"]) == (2, 1)
        assert [o["ok"] for o in result["outcomes"]] == [True, True, False]
        got = await asyncio.to_thread(endpoint.wait_for, 2)
        assert sorted(r.path for r in got) == ["/farm", SECRET_PATH]
        assert got[0].json()["title"] == "agentfarm: test notification"
        for text in (listed.text, tested.text, caplog.text):
            assert "very-secret-token-123" not in text
            assert "dead-secret-token-456" not in text


async def test_a_target_whose_host_is_its_token_is_listed_by_scheme_only(tmp_path: Path) -> None:
    # Listing sends nothing: no request leaves the machine.
    urls = "tgram://123456789:AAbbccddeeffgg/5555 discord://1234567/abcdefTOKEN"
    async with cockpit(tmp_path, notify_urls=urls) as cp:
        listed = await cp.api.get("/api/notifications")
        assert [t["target"] for t in listed.json()["targets"]] == ["tgram://", "discord://"]
        assert "AAbbccddeeffgg" not in listed.text and "abcdefTOKEN" not in listed.text
        assert "123456789" not in listed.text


async def test_only_admins_send_a_test(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user("ada")  # the first user: an admin
        await cp.add_user("bob")
        await login(browser, "bob")
        async with bearer(cp, await new_token(browser, "t")) as bob:
            refused = await bob.post("/api/notifications/test")
            assert refused.status_code == 403
            assert "admin" in refused.json()["error"]["message"]
            assert (await bob.get("/api/notifications")).status_code == 200
        page = await browser.get("/settings")
        assert "Notifications" in page.text and "Send a test" not in page.text
        csrf = await page_csrf(browser, "/settings")
        hx = {"HX-Request": "true", "X-CSRF-Token": csrf}
        assert (await browser.post("/settings/notifications/test", headers=hx)).status_code == 403


async def test_an_admins_token_without_the_admin_scope_sends_no_test(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        await cp.add_user("ada")  # an admin
        async with bearer(cp, await api_token(cp, "ada", "operate")) as operate:
            refused = await operate.post("/api/notifications/test")
            assert refused.status_code == 403
            assert "missing scope `admin`" in refused.json()["error"]["message"]
            made = await operate.post(
                "/api/push/subscriptions",
                json=Browser().subscription("https://push.example.org/send/abc"),
            )
            assert made.status_code == 201, made.text  # subscribing is operating
            gone = await operate.request(
                "DELETE", "/api/push/subscriptions",
                json={"endpoint": "https://push.example.org/send/abc"},
            )  # fmt: skip
            assert gone.status_code == 204  # (a test would push to it: tests stay on loopback)
        async with bearer(cp, await api_token(cp, "ada", "admin")) as admin:
            assert (await admin.post("/api/notifications/test")).status_code == 200


async def test_the_settings_page_s_test_button_shows_the_outcome_inline(
    tmp_path: Path, endpoint: JsonEndpoint
) -> None:
    dead = JsonEndpoint()
    dead_url = dead.url("/nobody-listens")
    dead.close()
    urls = f"{endpoint.url(SECRET_PATH)},{dead_url}"
    async with cockpit(tmp_path, notify_urls=urls) as cp, cp.browser() as browser:
        await cp.add_user("ada")
        await login(browser, "ada")
        page = await browser.get("/settings")
        assert 'id="notifications"' in page.text
        assert "<code>json://127.0.0.1</code>" in page.text
        assert "very-secret-token-123" not in page.text
        assert 'hx-post="/settings/notifications/test"' in page.text
        csrf = await page_csrf(browser, "/settings")
        answer = await browser.post(
            "/settings/notifications/test", headers={"HX-Request": "true", "X-CSRF-Token": csrf}
        )
        assert answer.status_code == 200
        assert "<html" not in answer.text  # a fragment for htmx
        assert "Test sent to 1 of 2 targets" in answer.text
        assert "<strong>failed</strong>" in answer.text
        assert "very-secret-token-123" not in answer.text and "nobody-listens" not in answer.text
        # Without script: the form posts and the whole page comes back with the outcome.
        whole = await browser.post("/settings/notifications/test", data={"csrf_token": csrf})
        assert whole.status_code == 200 and "<html" in whole.text
        assert "Test sent to 1 of 2 targets" in whole.text
        assert len(await asyncio.to_thread(endpoint.wait_for, 2)) == 2
        # A stale form is refused.
        stale = await browser.post("/settings/notifications/test", data={"csrf_token": "x"})
        assert stale.status_code == 403


async def test_a_browser_subscribes_and_receives_a_push_it_can_decrypt(
    tmp_path: Path, endpoint: JsonEndpoint
) -> None:
    phone = Browser()
    push_endpoint = endpoint.url("/push/sub-capability-abc", scheme="http")
    async with cockpit(tmp_path, push_allow_http=True) as cp, cp.browser() as browser:
        key_file = tmp_path / "vapid_private.pem"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = (await cp.api.get("/api/push/key")).json()["public_key"]
        assert isinstance(key, str) and len(key) == 87  # 65 bytes, base64url
        await cp.add_user("ada")
        await login(browser, "ada")
        page = await browser.get("/settings")
        assert 'src="/static/push.js"' in page.text and 'id="push-toggle"' in page.text
        csrf = await page_csrf(browser, "/settings")
        made = await browser.post(
            "/api/push/subscriptions",
            json=phone.subscription(push_endpoint),
            headers={"X-CSRF-Token": csrf},
        )
        assert made.status_code == 201, made.text
        assert made.json()["push_service"] == "push://127.0.0.1"
        listed = await cp.api.get("/api/notifications")
        assert listed.json()["push_subscriptions"] == 1
        assert "sub-capability-abc" not in listed.text
        tested = (await cp.api.post("/api/notifications/test")).json()
        assert tested["outcomes"] == [{"target": "push://127.0.0.1", "ok": True, "detail": "sent"}]
        [got] = await asyncio.to_thread(endpoint.wait_for, 1)
        assert got.path == "/push/sub-capability-abc"
        assert got.headers["content-encoding"] == "aes128gcm"
        assert got.headers["authorization"].startswith("vapid t=")
        assert f"k={key}" in got.headers["authorization"]
        message = phone.decrypt(got.body)
        assert message["title"] == "agentfarm: test notification"
        assert message["url"] == "/"
        # Unsubscribing removes it; a second time there is nothing to remove.
        gone = await browser.request(
            "DELETE", "/api/push/subscriptions", json={"endpoint": push_endpoint},
            headers={"X-CSRF-Token": csrf},
        )  # fmt: skip
        assert gone.status_code == 204
        again = await cp.api.request(
            "DELETE", "/api/push/subscriptions", json={"endpoint": push_endpoint}
        )
        assert again.status_code == 404
        assert (await cp.api.get("/api/notifications")).json()["push_subscriptions"] == 0


async def test_a_subscription_the_push_service_calls_gone_is_removed(
    tmp_path: Path, endpoint: JsonEndpoint
) -> None:
    async with cockpit(tmp_path, push_allow_http=True) as cp:
        sub = Browser().subscription(endpoint.url("/gone/old-phone", scheme="http"))
        assert (await cp.api.post("/api/push/subscriptions", json=sub)).status_code == 201
        [outcome] = (await cp.api.post("/api/notifications/test")).json()["outcomes"]
        assert outcome["ok"] is False and "removed" in outcome["detail"]
        assert (await cp.api.get("/api/notifications")).json()["push_subscriptions"] == 0


async def test_push_endpoints_must_be_https_by_default(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        sub = Browser().subscription("http://127.0.0.1:9/push/x")
        refused = await cp.api.post("/api/push/subscriptions", json=sub)
        assert refused.status_code == 422
        assert "https://" in refused.json()["error"]["message"]
        bad_keys = await cp.api.post(
            "/api/push/subscriptions",
            json={"endpoint": "https://push.example.org/x", "keys": {"p256dh": "<>", "auth": ""}},
        )
        assert bad_keys.status_code == 422


async def test_the_service_worker_is_served_from_the_root(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp:
        worker = await cp.api.get("/sw.js")
        assert worker.status_code == 200
        assert worker.headers["content-type"].startswith("text/javascript")
        assert "showNotification" in worker.text
        script = await cp.api.get("/static/push.js")
        assert "'PushManager' in window" in script.text or '"PushManager" in window' in script.text
