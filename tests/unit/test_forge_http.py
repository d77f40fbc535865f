"""Retry meaning of forge errors, rate limits, and the token staying out of every message."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import httpx
import pytest

from agentfarm.domain import errors as domain_errors
from agentfarm.pipeline import forges
from agentfarm.pipeline.forges import errors
from agentfarm.pipeline.forges.http import ForgeHttp, RetryPolicy
from tests.fakes.forge import FakeForge
from tests.unit.forge_helpers import REPO, forge

__all__ = ["forge"]


class Sleeps:
    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


def api_statuses(fake: FakeForge) -> list[int]:
    return [r.status for r in fake.requests if "/repos/" in r.path]


async def test_5xx_is_retried_with_growing_jittered_backoff(forge: FakeForge) -> None:
    sleeps = Sleeps()
    client = forges.make_client(forge.kind, forge.api_url, forges.Token(forge.token), sleep=sleeps)
    number = forge.open_issue(REPO, "x")
    forge.fail_next(3, 502)
    issue = await client.get_issue(REPO, number)
    await client.aclose()
    assert issue.number == number
    assert api_statuses(forge) == [502, 502, 502, 200]
    policy = RetryPolicy()
    for attempt, asked in enumerate(sleeps.asked, start=1):
        ceiling = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
        assert ceiling / 2 <= asked <= ceiling
    assert sleeps.asked[2] > sleeps.asked[0]


async def test_a_forge_still_failing_is_a_temporary_error_with_a_delay(forge: FakeForge) -> None:
    sleeps = Sleeps()
    client = forges.make_client(forge.kind, forge.api_url, forges.Token(forge.token), sleep=sleeps)
    forge.fail_next(10, 500)
    with pytest.raises(errors.TemporaryForgeError) as caught:
        await client.list_comments(REPO, forge.open_issue(REPO, "x"))
    await client.aclose()
    assert caught.value.status == 500
    assert caught.value.delay > 0
    assert not caught.value.outcome_unknown
    assert "it will be retried" in str(caught.value)
    assert len(sleeps.asked) == RetryPolicy().attempts - 1


async def test_a_failed_create_is_handed_back_not_repeated(forge: FakeForge) -> None:
    # A POST that reached the forge may have been done: repeating it could post the comment
    # twice, so the caller gets it back to look first (STYLE: look before you create).
    sleeps = Sleeps()
    client = forges.make_client(forge.kind, forge.api_url, forges.Token(forge.token), sleep=sleeps)
    number = forge.open_issue(REPO, "x")
    forge.fail_next(1, 502)
    with pytest.raises(errors.TemporaryForgeError) as caught:
        await client.create_comment(REPO, number, "hello")
    assert caught.value.outcome_unknown
    assert sleeps.asked == []
    forge.fail_next(1, 429, retry_after=2)  # refused before it was done: safe to repeat
    await client.create_comment(REPO, number, "hello")
    forge.fail_next(2, 503)  # adding labels is idempotent: retried
    await client.add_labels(REPO, number, ["bug"])
    await client.aclose()
    assert [c.body for c in forge.issue_comments(REPO, number)] == ["hello"]
    assert forge.issue_labels(REPO, number) == ["bug"]
    assert len(sleeps.asked) == 3


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [(429, {"retry_after": 7}, 7.0), (403, {"retry_after": 3}, 3.0), (403, {"reset_in": 40}, 40)],
)
async def test_rate_limits_are_waited_out_as_asked(
    forge: FakeForge, status: int, headers: dict[str, int], expected: float
) -> None:
    sleeps = Sleeps()
    client = forges.make_client(forge.kind, forge.api_url, forges.Token(forge.token), sleep=sleeps)
    number = forge.open_issue(REPO, "x")
    forge.fail_next(1, status, **headers)
    await client.get_issue(REPO, number)
    await client.aclose()
    (asked,) = sleeps.asked
    assert expected - 2 <= asked <= expected  # X-RateLimit-Reset is whole epoch seconds


async def test_a_long_rate_limit_is_handed_back_not_slept(forge: FakeForge) -> None:
    sleeps = Sleeps()
    client = forges.make_client(forge.kind, forge.api_url, forges.Token(forge.token), sleep=sleeps)
    forge.fail_next(1, 403, reset_in=3600)
    with pytest.raises(errors.RateLimitedError) as caught:
        await client.get_issue(REPO, forge.open_issue(REPO, "x"))
    await client.aclose()
    assert sleeps.asked == []
    assert 3500 < caught.value.delay <= 3600
    assert "rate limited" in str(caught.value)


async def test_a_plain_403_is_permanent_and_not_retried(forge: FakeForge) -> None:
    sleeps = Sleeps()
    client = forges.make_client(forge.kind, forge.api_url, forges.Token(forge.token), sleep=sleeps)
    forge.fail_next(1, 403)
    with pytest.raises(errors.PermanentForgeError, match="lacks a permission"):
        await client.get_issue(REPO, 1)
    await client.aclose()
    assert sleeps.asked == []


async def test_a_refused_token_is_permanent_and_never_shown(
    forge: FakeForge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "wrong-token-that-must-not-leak-123"
    sleeps = Sleeps()
    client = forges.make_client(forge.kind, forge.api_url, forges.Token(token), sleep=sleeps)
    with pytest.raises(errors.PermanentForgeError) as caught:
        await client.list_labeled_issues(REPO, "agentfarm")
    assert caught.value.status == 401
    assert "store a valid, unexpired token" in str(caught.value)
    assert sleeps.asked == []
    shown = [str(caught.value), repr(caught.value), repr(client), caplog.text]
    shown += [repr(forges.Token(token)), f"{forges.Token(token)}"]
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    await client.aclose()
    assert not [text for text in shown if token in text]


async def test_an_unreachable_forge_is_temporary(tmp_path: Path) -> None:
    # A loopback port nobody listens on: bound, then closed.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "token-that-must-not-leak-456"
    sleeps = Sleeps()
    client = forges.make_client(
        "forgejo", f"http://127.0.0.1:{port}/api/v1", forges.Token(token), sleep=sleeps
    )
    with pytest.raises(errors.TemporaryForgeError) as caught:
        await client.get_issue(REPO, 1)
    await client.aclose()
    assert caught.value.status is None
    assert "ConnectError" in str(caught.value)
    assert token not in str(caught.value) and token not in repr(caught.value)
    assert len(sleeps.asked) == RetryPolicy().attempts - 1


@pytest.mark.parametrize("value", ["", "Bearer abc", "abc\ndef", "tab\there"])
def test_tokens_are_validated(value: str) -> None:
    with pytest.raises(domain_errors.InvalidInputError):
        forges.Token(value)


@pytest.mark.parametrize("repo", ["proj", "a/b/c", "../x", "a/..", "a b/c", ""])
async def test_repository_names_are_validated(repo: str) -> None:
    client = forges.make_client("github", "http://127.0.0.1:9", forges.Token("t0ken"))
    with pytest.raises(domain_errors.InvalidInputError, match="owner/name"):
        await client.get_issue(repo, 1)
    await client.aclose()


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=8)
    assert policy.backoff(10, rng=lambda: 1.0) == 8
    assert policy.backoff(1, rng=lambda: 0.0) == 0.5


async def test_the_token_never_follows_a_link_to_another_host() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        link = '<http://127.0.0.2:9/repos/a/b/issues?page=2>; rel="next"'
        return httpx.Response(200, json=[], headers={"Link": link})

    http = ForgeHttp(
        base_url="http://127.0.0.1:9",
        auth="Bearer",
        token=forges.Token("t0ken-value"),
        transport=httpx.MockTransport(answer),
    )
    with pytest.raises(errors.PermanentForgeError, match="another host"):
        await http.pages("/repos/a/b/issues", {})
    await http.aclose()
    assert [str(r.url.host) for r in seen] == ["127.0.0.1"]


@pytest.mark.parametrize("url", ["ftp://h/api/v1", "api.github.com", "https://u:p@h/api/v1"])
def test_base_urls_are_validated(url: str) -> None:
    with pytest.raises(domain_errors.InvalidInputError, match="not a forge API URL"):
        forges.make_client("forgejo", url, forges.Token("t0ken"))


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(301, headers={"Location": "http://127.0.0.1:9/repos/a/c"}), "redirected"),
        (httpx.Response(200, text="<html>login</html>"), "did not answer a list"),
    ],
)
async def test_answers_that_are_not_the_api_are_permanent(
    answer: httpx.Response, message: str
) -> None:
    http = ForgeHttp(
        base_url="http://127.0.0.1:9",
        auth="token",
        token=forges.Token("t0ken-value"),
        transport=httpx.MockTransport(lambda _request: answer),
    )
    with pytest.raises(errors.PermanentForgeError, match=message):
        await http.pages("/repos/a/b/issues", {})
    await http.aclose()
