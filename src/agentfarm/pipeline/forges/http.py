"""The HTTP part every forge client shares: auth, retries, rate limits, pages, ETags.

Retry meaning, as in kopf: 5xx and network errors are retried here with exponential backoff
and jitter; a rate limit (429, or 403 with ``Retry-After`` or ``X-RateLimit-Remaining: 0``) is
waited out when the forge asks for at most ``RetryPolicy.max_wait`` seconds. What is still
failing then surfaces as :class:`~.errors.TemporaryForgeError` with the delay to try again
after, for the pipeline to reschedule; any other 4xx is permanent at once.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from agentfarm.domain import errors as domain_errors
from agentfarm.pipeline.forges import errors

Json = dict[str, Any]
Sleep = Callable[[float], Awaitable[None]]

REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_LINK_NEXT_RE = re.compile(r'<([^>]+)>\s*;\s*rel="next"')
#: A list longer than this many pages is refused rather than read forever.
MAX_PAGES = 50


class Token:
    """A forge token that never shows itself in a repr, a str or a format string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        # It goes into a header, which carries ASCII only (httpx would fail at each request).
        if (
            not value
            or not value.isascii()
            or any(ch.isspace() for ch in value)
            or not value.isprintable()
        ):
            raise domain_errors.InvalidInputError(
                "the forge token is empty or contains whitespace, control or non-ASCII characters: "
                "store the token alone, without a 'Bearer ' or 'token ' prefix"
            )
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Token('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: A rate limit asking for a longer pause is raised, not slept through.
    max_wait: float = 60.0

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Exponential with equal jitter: half fixed, half random, so clients spread out."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return ceiling / 2 + ceiling / 2 * rng()


def valid_repo(repo: str) -> bool:
    return bool(REPO_RE.fullmatch(repo)) and all(
        part not in (".", "..") for part in repo.split("/")
    )


def repo_path(repo: str) -> str:
    if not valid_repo(repo):
        raise domain_errors.InvalidInputError(
            f"{repo!r} is not a repository name: write it as owner/name"
        )
    return f"/repos/{repo}"


def segment(value: str) -> str:
    """One path segment (a label name, a branch), escaped."""
    return quote(value, safe="")


class ForgeHttp:
    def __init__(
        self,
        *,
        base_url: str,
        auth: str,
        token: Token,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not base_url.startswith(("https://", "http://")) or "@" in base_url:
            raise domain_errors.InvalidInputError(
                f"{base_url!r} is not a forge API URL: write it as https://HOST/api/v1 "
                "(Forgejo/Gitea), https://HOST/api/v3 or https://api.github.com (GitHub), "
                "without credentials"
            )
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._sleep = sleep or asyncio.sleep
        self._etags: dict[str, tuple[str, list[Json]]] = {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={
                "Authorization": f"{auth} {token.reveal()}",
                "User-Agent": "agentfarm",
                "Accept": "application/json",
                **(headers or {}),
            },
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"ForgeHttp({self.base_url!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        allow: tuple[int, ...] = (),
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """The response (2xx, 304 or a status in ``allow``), else the classified error.

        A request that is not ``idempotent`` (by default: a POST) is retried here only when it
        cannot have reached the forge (no connection, a rate limit). Otherwise a failure is
        handed back with ``outcome_unknown`` set: the caller looks before it creates again.
        """
        if idempotent is None:
            idempotent = method != "POST"
        url = path if path.startswith(self.base_url) else self.base_url + path
        shown = url.removeprefix(self.base_url).split("?")[0]
        for attempt in range(1, self.retry.attempts + 1):
            backoff = self.retry.backoff(attempt)
            try:
                response = await self._client.request(
                    method, url, params=params, json=json, headers=headers
                )
            except httpx.TransportError as exc:
                error: errors.ForgeError = errors.TemporaryForgeError(
                    f"{method} {shown} failed: {type(exc).__name__}; the forge is unreachable "
                    "or slow, it will be retried",
                    delay=backoff,
                )
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            else:
                status = response.status_code
                if status < 300 or status == 304 or status in allow:
                    return response
                error = errors.classify(method, shown, response, time.time())
                sent = True
            if not isinstance(error, errors.TemporaryForgeError):
                raise error from None
            if not isinstance(error, errors.RateLimitedError):
                error.delay = backoff
                if sent and not idempotent:
                    error.outcome_unknown = True
                    raise error from None
            if attempt == self.retry.attempts or error.delay > self.retry.max_wait:
                raise error from None
            await self._sleep(error.delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise errors.PermanentForgeError(
                f"{method} {path} answered {response.status_code} with a body that is not "
                "JSON: check the forge's base URL (GitHub: /api/v3, Forgejo/Gitea: /api/v1)",
                status=response.status_code,
            ) from None

    async def pages(
        self, path: str, params: Mapping[str, str | int], *, conditional: bool = False
    ) -> list[Json]:
        """Every item of a paged list (``Link: rel="next"``). With ``conditional``, the first
        page is asked with the ETag of the last answer and a 304 returns the remembered list."""
        key = path + "?" + "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        remembered = self._etags.get(key) if conditional else None
        headers = {"If-None-Match": remembered[0]} if remembered else None
        response = await self.request("GET", path, params=params, headers=headers)
        if response.status_code == 304 and remembered:
            return list(remembered[1])
        items: list[Json] = []
        etag = response.headers.get("etag")
        for _ in range(MAX_PAGES):
            try:
                data = response.json()
            except ValueError:
                data = None
            if not isinstance(data, list):
                raise errors.PermanentForgeError(
                    f"GET {path} did not answer a list: check the forge's base URL"
                )
            items.extend(item for item in data if isinstance(item, dict))
            match = _LINK_NEXT_RE.search(response.headers.get("link", ""))
            if match is None:
                break
            # The token goes only to the configured forge, whatever a Link header says.
            if not match.group(1).startswith(self.base_url + "/"):
                raise errors.PermanentForgeError(
                    f"GET {path}: the next page is on another host; check the base URL"
                )
            response = await self.request("GET", match.group(1))
        else:
            raise errors.PermanentForgeError(f"GET {path}: more than {MAX_PAGES} pages")
        if conditional and etag:
            self._etags[key] = (etag, items)
        return list(items)
