"""What GitHub and Forgejo/Gitea do alike: issues and their comments have the same paths and
shapes on both (only the page-size parameter differs), so both clients share these calls."""

from __future__ import annotations

from typing import Any, ClassVar

from agentfarm.pipeline.forges import errors, parse, types
from agentfarm.pipeline.forges.http import ForgeHttp, repo_path, segment


class IssuesAndComments:
    #: The forge's page-size query parameter at its largest useful value.
    PAGE: ClassVar[dict[str, Any]]

    def __init__(self, http: ForgeHttp) -> None:
        self.http = http

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.http.base_url!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get_repo(self, repo: str) -> types.Repository:
        return parse.repository(await self.http.json("GET", repo_path(repo)))

    async def branch_exists(self, repo: str, branch: str) -> bool:
        try:
            await self.http.json("GET", f"{repo_path(repo)}/branches/{segment(branch)}")
        except errors.ForgeNotFoundError:
            return False
        return True

    async def get_issue(self, repo: str, number: int) -> types.Issue:
        return parse.issue(await self.http.json("GET", f"{repo_path(repo)}/issues/{number}"))

    async def list_comments(self, repo: str, number: int) -> list[types.Comment]:
        items = await self.http.pages(f"{repo_path(repo)}/issues/{number}/comments", self.PAGE)
        return [parse.comment(item) for item in items]

    async def create_comment(self, repo: str, number: int, body: str) -> types.Comment:
        data = await self.http.json(
            "POST", f"{repo_path(repo)}/issues/{number}/comments", json={"body": body}
        )
        return parse.comment(data)

    async def edit_comment(self, repo: str, comment_id: int, body: str) -> types.Comment:
        data = await self.http.json(
            "PATCH", f"{repo_path(repo)}/issues/comments/{comment_id}", json={"body": body}
        )
        return parse.comment(data)
