"""Forge clients (GitHub, Forgejo/Gitea) behind one interface, and webhook handling."""

from __future__ import annotations

from agentfarm.pipeline.forges import types
from agentfarm.pipeline.forges.forgejo import ForgejoClient
from agentfarm.pipeline.forges.github import GitHubClient
from agentfarm.pipeline.forges.http import ForgeHttp, RetryPolicy, Sleep, Token

__all__ = ["ForgejoClient", "GitHubClient", "RetryPolicy", "Token", "make_client"]


def make_client(
    kind: types.ForgeKind,
    base_url: str,
    token: Token,
    *,
    retry: RetryPolicy | None = None,
    sleep: Sleep | None = None,
) -> types.ForgeClient:
    """A client for ``kind`` at ``base_url`` (GitHub: ``https://api.github.com`` or
    ``https://HOST/api/v3``; Forgejo/Gitea: ``https://HOST/api/v1``)."""
    if kind == "github":
        http = ForgeHttp(
            base_url=base_url,
            auth="Bearer",
            token=token,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            retry=retry,
            sleep=sleep,
        )
        return GitHubClient(http)
    http = ForgeHttp(base_url=base_url, auth="token", token=token, retry=retry, sleep=sleep)
    return ForgejoClient(http, kind)
