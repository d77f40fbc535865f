"""The GitHub (and GitHub Enterprise, ``https://HOST/api/v3``) REST client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from agentfarm.pipeline.forges import common, errors, parse, types
from agentfarm.pipeline.forges.http import repo_path, segment

API_VERSION = "2022-11-28"
PER_PAGE = 100


class GitHubClient(common.IssuesAndComments):
    PAGE: ClassVar[dict[str, Any]] = {"per_page": PER_PAGE}
    kind: types.ForgeKind = "github"

    async def list_labeled_issues(self, repo: str, label: str) -> list[types.Issue]:
        items = await self.http.pages(
            f"{repo_path(repo)}/issues",
            {"labels": label, "state": "open", "per_page": PER_PAGE},
            conditional=True,
        )
        # GitHub lists pull requests as issues too; they carry a `pull_request` key.
        return [parse.issue(item) for item in items if "pull_request" not in item]

    async def add_labels(self, repo: str, number: int, names: Sequence[str]) -> None:
        await self.http.request(
            "POST",
            f"{repo_path(repo)}/issues/{number}/labels",
            json={"labels": list(names)},
            idempotent=True,
        )

    async def remove_label(self, repo: str, number: int, name: str) -> None:
        await self.http.request(
            "DELETE", f"{repo_path(repo)}/issues/{number}/labels/{segment(name)}", allow=(404,)
        )

    async def find_open_pull(self, repo: str, head: str) -> types.PullRequest | None:
        owner = repo.split("/")[0]
        items = await self.http.pages(
            f"{repo_path(repo)}/pulls",
            {"state": "open", "head": f"{owner}:{head}", "per_page": PER_PAGE},
        )
        pulls = [parse.pull(item) for item in items]
        return next((pull for pull in pulls if pull.head == head), None)

    async def open_pull(
        self, repo: str, *, title: str, head: str, base: str, body: str, draft: bool
    ) -> types.PullRequest:
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": draft}
        return parse.pull(await self.http.json("POST", f"{repo_path(repo)}/pulls", json=payload))

    async def label_applied_by(self, repo: str, number: int, label: str) -> str | None:
        events = await self.http.pages(
            f"{repo_path(repo)}/issues/{number}/events", {"per_page": PER_PAGE}
        )
        actor: str | None = None
        for event in events:  # oldest first: the last match is the latest application
            if event.get("event") == "labeled" and _name(event.get("label")) == label:
                actor = _name(event.get("actor"), "login") or None
        return actor

    async def may_write(self, repo: str, user: str) -> bool:
        try:
            data = await self.http.json(
                "GET", f"{repo_path(repo)}/collaborators/{segment(user)}/permission"
            )
        except errors.ForgeNotFoundError:
            return False
        permission = data.get("permission") if isinstance(data, dict) else None
        return permission in ("admin", "write", "maintain")

    async def combined_status(self, repo: str, ref: str) -> types.CombinedStatus:
        path = f"{repo_path(repo)}/commits/{segment(ref)}"
        combined = await self.http.json("GET", f"{path}/status", params={"per_page": PER_PAGE})
        runs = await self.http.json("GET", f"{path}/check-runs", params={"per_page": PER_PAGE})
        if not isinstance(combined, dict) or not isinstance(runs, dict):
            raise errors.PermanentForgeError(f"GET {path}/status: not a status object")
        checks = [
            types.Check(
                name=str(item.get("context") or ""),
                state=parse.check_state(item.get("state")),
                url=str(item.get("target_url") or ""),
                description=str(item.get("description") or ""),
            )
            for item in combined.get("statuses") or []
        ]
        checks += [_check_run(item) for item in runs.get("check_runs") or []]
        return types.CombinedStatus(
            sha=str(combined.get("sha") or ""),
            state=parse.worst([check.state for check in checks]),
            checks=tuple(checks),
        )


def _name(value: Any, key: str = "name") -> str:
    return str(value.get(key) or "") if isinstance(value, dict) else ""


def _check_run(item: Any) -> types.Check:
    if item.get("status") != "completed":
        state: types.CheckState = "pending"
    else:
        state = parse.check_state(item.get("conclusion"))
    output = item.get("output") or {}
    return types.Check(
        name=str(item.get("name") or ""),
        state=state,
        url=str(item.get("details_url") or item.get("html_url") or ""),
        description=str(output.get("title") or output.get("summary") or ""),
    )
