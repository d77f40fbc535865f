"""Forge errors carry their retry meaning, as kopf's do: temporary (try again after ``delay``
seconds) or permanent (retrying changes nothing; the message says what to do).

:func:`classify` turns a failed response into one of them. Messages name the method, the path
and the forge's own reason. They never contain the token:
it is only ever in a request header, and no request or response object is chained.
"""

from __future__ import annotations

import httpx

from agentfarm.domain import errors


class ForgeError(errors.AgentfarmError):
    """Root of the errors a forge client raises."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status the forge answered, None for a network failure.
        self.status = status


class TemporaryForgeError(ForgeError, ConnectionError):
    """5xx, network trouble or a rate limit: the same call may succeed after ``delay``."""

    def __init__(self, message: str, *, delay: float, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.delay = delay
        #: A create that may have been done before the failure: look before repeating it.
        self.outcome_unknown = False


class RateLimitedError(TemporaryForgeError):
    """The forge asked us to slow down; ``delay`` is what it asked for."""


class PermanentForgeError(ForgeError, RuntimeError):
    """A 4xx or an answer we cannot use: retrying the same call will not help."""


class ForgeNotFoundError(PermanentForgeError, LookupError):
    """The repository, issue, comment or branch does not exist (or the token cannot see it)."""


def forge_message(response: httpx.Response) -> str:
    """The forge's own reason, short, from ``message`` and GitHub's ``errors[].message``."""
    try:
        data = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if not isinstance(data, dict):
        return f"HTTP {response.status_code}"
    parts = [str(data.get("message") or "")]
    for item in data.get("errors") or []:
        if isinstance(item, dict) and item.get("message"):
            parts.append(str(item["message"]))
    return "; ".join(part for part in parts if part)[:300] or f"HTTP {response.status_code}"


def rate_limit_delay(response: httpx.Response, now: float) -> float | None:
    """Seconds the forge asks us to wait, or None when this is not a rate limit."""
    retry_after = response.headers.get("retry-after")
    remaining = response.headers.get("x-ratelimit-remaining")
    reset = response.headers.get("x-ratelimit-reset")
    limited = response.status_code == 429 or (
        response.status_code == 403 and (retry_after is not None or remaining == "0")
    )
    if not limited:
        return None
    if retry_after is not None and retry_after.strip().isdigit():
        return max(1.0, float(retry_after))
    if reset is not None and reset.strip().isdigit():
        return max(1.0, float(reset) - now)
    return 60.0


def classify(method: str, path: str, response: httpx.Response, now: float) -> ForgeError:
    status = response.status_code
    where = f"{method} {path} answered {status}: {forge_message(response)}"
    delay = rate_limit_delay(response, now)
    if delay is not None:
        return RateLimitedError(
            f"{where}; rate limited, retry in {delay:.0f}s", delay=delay, status=status
        )
    if status >= 500:
        return TemporaryForgeError(
            f"{where}; the forge is failing, it will be retried", delay=0.0, status=status
        )
    if 300 <= status < 400:
        return PermanentForgeError(
            f"{where}; the forge redirected to {response.headers.get('location', '?')[:200]}: "
            "the repository moved or the base URL is wrong, update it",
            status=status,
        )
    if status == 401:
        hint = "the forge refused the token: store a valid, unexpired token in the secret"
    elif status == 403:
        hint = "the token lacks a permission: grant it read/write on issues, pulls and contents"
    elif status == 404:
        return ForgeNotFoundError(
            f"{where}; check the repository name and that the token can see it", status=status
        )
    else:
        hint = "the forge rejected the request; fix the input and try again"
    return PermanentForgeError(f"{where}; {hint}", status=status)
