"""Web Push to the cockpit installed on a phone: the VAPID key pair, and pushes to every stored
subscription through ``pywebpush`` (it encrypts the payload for the browser, RFC 8291, and
signs the VAPID claim, RFC 8292).

The private key is made once, at first start, in the data directory (mode 0600); the public
one is what the browser's ``pushManager.subscribe`` needs. A subscription the push service
says is gone (404, 410) is removed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agentfarm.settings import Settings
from agentfarm.store import push
from agentfarm.supervisor.apprise_targets import MASKING, Outcome, Target

log = logging.getLogger(__name__)

#: How long a push service keeps a message for a phone that is offline (seconds).
TTL = 12 * 3600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_or_create_key(path: Path) -> Any:
    """The VAPID private key (a ``py_vapid.Vapid02``), made at first use with mode 0600."""
    from py_vapid import Vapid02

    if path.is_file():
        return Vapid02.from_file(str(path))
    vapid = Vapid02()
    vapid.generate_keys()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another server on this data directory made it meanwhile
        return Vapid02.from_file(str(path))
    with os.fdopen(fd, "wb") as fh:
        fh.write(vapid.private_pem())
    return vapid


def public_key(vapid: Any) -> str:
    """The application server key as the browser wants it: the uncompressed point, base64url."""
    from cryptography.hazmat.primitives import serialization

    raw = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return _b64url(raw)


def check_endpoint(endpoint: str, *, allow_http: bool) -> str | None:
    """Why ``endpoint`` cannot be a push endpoint, or None."""
    try:
        split = urlsplit(endpoint)
    except ValueError:
        return "the endpoint is not a URL"
    if split.scheme != "https" and not (allow_http and split.scheme == "http"):
        return "a push endpoint is an https:// URL of the browser's push service"
    if not split.hostname or split.username or split.password:
        return "the endpoint needs a host name and no user or password"
    return None


def shown(endpoint: str) -> str:
    """A subscription as it may be shown: the push service's host (the path is a capability)."""
    try:
        return f"push://{urlsplit(endpoint).hostname or ''}"
    except ValueError:
        return "push://"


class WebPush:
    def __init__(self, settings: Settings, subscriptions: push.PushSubscriptions) -> None:
        self._settings = settings
        self.subscriptions = subscriptions
        self._vapid: Any = None

    async def start(self) -> None:
        self._vapid = await asyncio.to_thread(load_or_create_key, self._settings.vapid_key_path)

    @property
    def public_key(self) -> str | None:
        return public_key(self._vapid) if self._vapid is not None else None

    def _contact(self) -> str:
        settings = self._settings
        if settings.push_contact:
            return settings.push_contact
        if settings.public_url and settings.public_url.startswith("https://"):
            return settings.public_url.rstrip("/")
        return "mailto:agentfarm@localhost"

    async def send(self, payload: dict[str, Any]) -> list[Outcome]:
        """Push ``payload`` (JSON: title, body, url) to every subscription; never raises."""
        if self._vapid is None:
            return []
        subs = await self.subscriptions.list()
        data = json.dumps(payload)
        outcomes = []
        for sub in subs:
            outcome, gone = await asyncio.to_thread(self._send_one, sub, data)
            if gone:
                await self.subscriptions.remove(sub.endpoint)
            outcomes.append(outcome)
        return outcomes

    def _send_one(self, sub: push.Subscription, data: str) -> tuple[Outcome, bool]:
        from pywebpush import WebPushException, webpush

        where = shown(sub.endpoint)
        claims: dict[str, str | int] = {"sub": self._contact()}
        try:
            # The endpoint is a capability URL: masked in what requests' urllib3 logs.
            with MASKING.sending(Target(sub.endpoint, "push")):
                webpush(
                    sub.info(),
                    data=data,
                    vapid_private_key=self._vapid,
                    vapid_claims=claims,
                    timeout=self._settings.notify_timeout_seconds,
                    ttl=TTL,
                )
        except WebPushException as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (404, 410):
                return Outcome(where, False, f"the subscription is gone ({status}); removed"), True
            return Outcome(where, False, f"the push service answered {status or 'nothing'}"), False
        except Exception as exc:  # a connection error: its text names the endpoint's path
            why = f"could not reach the push service ({type(exc).__name__})"
            return Outcome(where, False, why), False
        return Outcome(where, True, "sent"), False
