"""Forge JSON -> the plain values of :mod:`.types`. The shapes GitHub and Forgejo/Gitea share
(issues, comments, pull requests) are read here; what differs is read in each client."""

from __future__ import annotations

from typing import Any

from agentfarm.pipeline.forges import errors, types

Json = dict[str, Any]

#: Title prefixes that make a Forgejo/Gitea pull request a draft ("work in progress").
WIP_PREFIXES = ("WIP:", "[WIP]")


def _login(value: Any) -> str:
    return str(value.get("login") or "") if isinstance(value, dict) else ""


def _require(data: Any, what: str) -> Json:
    if not isinstance(data, dict) or ("number" not in data and "id" not in data):
        raise errors.PermanentForgeError(
            f"the forge answered something that is not {what}: check the forge's base URL"
        )
    return data


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise errors.PermanentForgeError(f"the forge sent {what} without a valid number or id")
    return int(value)


def issue(data: Any) -> types.Issue:
    data = _require(data, "an issue")
    return types.Issue(
        number=_int(data.get("number"), "an issue"),
        title=str(data.get("title") or ""),
        body=str(data.get("body") or ""),
        state=str(data.get("state") or ""),
        labels=tuple(
            str(label["name"])
            for label in data.get("labels") or []
            if isinstance(label, dict) and "name" in label
        ),
        author=_login(data.get("user")),
        url=str(data.get("html_url") or ""),
    )


def repository(data: Any) -> types.Repository:
    data = _require(data, "a repository")
    branch = str(data.get("default_branch") or "")
    if not branch or len(branch) > 255 or not branch.isprintable() or branch.startswith("-"):
        raise errors.PermanentForgeError(
            "the forge sent a repository without a usable default branch: set one on the forge"
        )
    return types.Repository(full_name=str(data.get("full_name") or ""), default_branch=branch)


def comment(data: Any) -> types.Comment:
    data = _require(data, "a comment")
    return types.Comment(
        id=_int(data.get("id"), "a comment"),
        body=str(data.get("body") or ""),
        author=_login(data.get("user")),
        created_at=str(data.get("created_at") or ""),
        updated_at=str(data.get("updated_at") or ""),
    )


def pull(data: Any) -> types.PullRequest:
    data = _require(data, "a pull request")
    head = data.get("head") or {}
    base = data.get("base") or {}
    title = str(data.get("title") or "")
    return types.PullRequest(
        number=_int(data.get("number"), "a pull request"),
        url=str(data.get("html_url") or ""),
        title=title,
        head=str(head.get("ref") or ""),
        head_sha=str(head.get("sha") or ""),
        base=str(base.get("ref") or ""),
        draft=bool(data.get("draft")) or title.startswith(WIP_PREFIXES),
    )


def check_state(value: Any) -> types.CheckState:
    """A status or conclusion, folded into four states; the worst one wins when combined."""
    text = str(value or "").lower()
    if text == "success" or text in ("neutral", "skipped"):
        return "success"
    if text in ("failure", "error", "timed_out", "cancelled", "action_required", "warning"):
        return "failure"
    if text in ("pending", "queued", "in_progress", "waiting", "requested"):
        return "pending"
    return "none"


def worst(states: list[types.CheckState]) -> types.CheckState:
    order: tuple[types.CheckState, ...] = ("failure", "pending", "success")
    return next((state for state in order if state in states), "none")
