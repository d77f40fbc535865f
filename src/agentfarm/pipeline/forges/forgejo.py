"""The Forgejo / Gitea REST client (``https://HOST/api/v1``, ``Authorization: token``).

Where it differs from GitHub: labels are added by name on current servers and by id on older
Gitea (tried in that order; missing labels are created), removed by id; a draft is a ``WIP:``
title prefix; who applied a label is in the issue's timeline; there are no check runs, only
commit statuses (each carries its state in ``status``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from agentfarm.pipeline.forges import common, errors, parse, types
from agentfarm.pipeline.forges.http import ForgeHttp, repo_path, segment

LIMIT = 50
#: The colour of a label this client has to create (state labels on a fresh repository).
NEW_LABEL_COLOR = "#6f42c1"


class ForgejoClient(common.IssuesAndComments):
    PAGE: ClassVar[dict[str, Any]] = {"limit": LIMIT}

    def __init__(self, http: ForgeHttp, kind: types.ForgeKind = "forgejo") -> None:
        super().__init__(http)
        self.kind: types.ForgeKind = kind

    async def list_labeled_issues(self, repo: str, label: str) -> list[types.Issue]:
        items = await self.http.pages(
            f"{repo_path(repo)}/issues",
            {"labels": label, "state": "open", "type": "issues", "limit": LIMIT},
            conditional=True,
        )
        return [parse.issue(item) for item in items if not item.get("pull_request")]

    async def add_labels(self, repo: str, number: int, names: Sequence[str]) -> None:
        path = f"{repo_path(repo)}/issues/{number}/labels"
        try:
            await self.http.request("POST", path, json={"labels": list(names)}, idempotent=True)
            return
        except errors.PermanentForgeError as exc:
            # Older Gitea accepts ids only (422); current servers refuse unknown names (422).
            if exc.status != 422:
                raise
        ids = await self._label_ids(repo, names, create=True)
        labels = [ids[name] for name in names]
        await self.http.request("POST", path, json={"labels": labels}, idempotent=True)

    async def remove_label(self, repo: str, number: int, name: str) -> None:
        ids = await self._label_ids(repo, [name], create=False)
        if name in ids:
            await self.http.request(
                "DELETE", f"{repo_path(repo)}/issues/{number}/labels/{ids[name]}", allow=(404,)
            )

    async def _label_ids(self, repo: str, names: Sequence[str], *, create: bool) -> dict[str, int]:
        labels = await self.http.pages(f"{repo_path(repo)}/labels", {"limit": LIMIT})
        ids = {str(label.get("name")): int(label["id"]) for label in labels if "id" in label}
        for name in names:
            if name not in ids and create:
                made = await self.http.json(
                    "POST",
                    f"{repo_path(repo)}/labels",
                    json={"name": name, "color": NEW_LABEL_COLOR},
                )
                ids[name] = int(made["id"])
        return ids

    async def find_open_pull(self, repo: str, head: str) -> types.PullRequest | None:
        items = await self.http.pages(f"{repo_path(repo)}/pulls", {"state": "open", "limit": LIMIT})
        for item in items:
            head_repo = (item.get("head") or {}).get("repo") or {}
            same_repo = head_repo.get("full_name", repo) == repo
            if same_repo and (item.get("head") or {}).get("ref") == head:
                return parse.pull(item)
        return None

    async def open_pull(
        self, repo: str, *, title: str, head: str, base: str, body: str, draft: bool
    ) -> types.PullRequest:
        if draft and not title.startswith(parse.WIP_PREFIXES):
            title = f"WIP: {title}"
        payload = {"title": title, "head": head, "base": base, "body": body}
        return parse.pull(await self.http.json("POST", f"{repo_path(repo)}/pulls", json=payload))

    async def label_applied_by(self, repo: str, number: int, label: str) -> str | None:
        items = await self.http.pages(
            f"{repo_path(repo)}/issues/{number}/timeline", {"limit": LIMIT}
        )
        actor: str | None = None
        for item in items:  # oldest first; body "1" is an addition, "" a removal
            added = item.get("type") == "label" and item.get("body") == "1"
            if added and _get(item.get("label"), "name") == label:
                actor = _get(item.get("user"), "login") or None
        return actor

    async def may_write(self, repo: str, user: str) -> bool:
        try:
            data = await self.http.json(
                "GET", f"{repo_path(repo)}/collaborators/{segment(user)}/permission"
            )
        except errors.ForgeNotFoundError:
            # No such user, or a server without the endpoint. The collaborator list cannot
            # tell read from write, so only the owner is trusted then (fail closed).
            data = await self.http.json("GET", repo_path(repo))
            return _get(data.get("owner") if isinstance(data, dict) else None, "login") == user
        permission = data.get("permission") if isinstance(data, dict) else None
        return permission in ("owner", "admin", "write")

    async def combined_status(self, repo: str, ref: str) -> types.CombinedStatus:
        path = f"{repo_path(repo)}/commits/{segment(ref)}/status"
        data = await self.http.json("GET", path)
        if not isinstance(data, dict):
            raise errors.PermanentForgeError(f"GET {path}: not a status object")
        checks = tuple(
            types.Check(
                name=str(item.get("context") or ""),
                state=parse.check_state(item.get("status") or item.get("state")),
                url=str(item.get("target_url") or ""),
                description=str(item.get("description") or ""),
            )
            for item in data.get("statuses") or []
        )
        return types.CombinedStatus(
            sha=str(data.get("sha") or ""),
            state=parse.worst([check.state for check in checks]),
            checks=checks,
        )


def _get(value: Any, key: str) -> str:
    return str(value.get(key) or "") if isinstance(value, dict) else ""
