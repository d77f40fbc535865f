"""CSRF tokens: an HMAC of what the request is bound to, under the server's cookie key.

Stateless: a signed-in browser's token is bound to its session (the digest of the session
cookie), a forward-auth user's to their name, and the login form's to a random pre-login
cookie. A cross-site page can neither read the token nor forge it, and SameSite cookies are
a second fence. Bearer-token clients carry no cookies and need no token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

FIELD = "csrf_token"
HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_for(key: bytes, binding: str) -> str:
    mac = hmac.new(key, b"csrf:" + binding.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def valid(key: bytes, binding: str, presented: str | None) -> bool:
    if not presented or not binding:
        return False
    return hmac.compare_digest(presented.encode(), token_for(key, binding).encode())
