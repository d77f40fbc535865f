"""The REST half of the fake forge: JSON shapes and route handlers for GitHub and Forgejo.

Handlers are plain functions of a :class:`Ctx`, run under the fake's lock after the token
check, the failure injection and the repository lookup (:func:`endpoint`).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from tests.fakes.forge import FakeForge, Issue, Repo

Json = dict[str, Any]


@dataclass
class Ctx:
    fake: FakeForge
    repo: Repo
    params: Mapping[str, Any]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any
    url: str

    @property
    def github(self) -> bool:
        return self.fake.kind == "github"

    def issue(self) -> Issue | None:
        return self.repo.issues.get(int(self.params["number"]))


Handler = Callable[[Ctx], Response]


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": message, **extra}, status)


# -- JSON shapes --------------------------------------------------------------------------


def user_json(login: str) -> Json:
    return {"id": zlib.crc32(login.encode()), "login": login, "username": login, "type": "User"}


def repo_json(fake: FakeForge, repo: Repo) -> Json:
    return {
        "id": repo.id,
        "name": repo.name.split("/")[1],
        "full_name": repo.name,
        "owner": user_json(repo.owner),
        "private": False,
        "default_branch": repo.default_branch,
        "clone_url": fake.git_url(repo.name),
        "html_url": f"{fake.base_url}/{repo.name}",
    }


def issue_json(fake: FakeForge, repo_name: str, issue: Issue) -> Json:
    repo = fake.repos[repo_name]
    kind = "pull" if issue.pull is not None and fake.kind == "github" else "issues"
    if issue.pull is not None and fake.kind != "github":
        kind = "pulls"
    data: Json = {
        "id": issue.id,
        "number": issue.number,
        "title": issue.title,
        "body": issue.body,
        "state": issue.state,
        "labels": [repo.labels[i] for i in issue.labels],
        "user": user_json(issue.author),
        "html_url": f"{fake.base_url}/{repo_name}/{kind}/{issue.number}",
        "comments": len(issue.comments),
        "created_at": issue.created_at,
        "updated_at": issue.created_at,
    }
    if fake.kind == "github":
        if issue.pull is not None:
            data["pull_request"] = {"html_url": data["html_url"]}
    else:
        data["pull_request"] = {"merged": False} if issue.pull is not None else None
    return data


def comment_json(fake: FakeForge, comment: Any) -> Json:
    return {
        "id": comment.id,
        "body": comment.body,
        "user": user_json(comment.author),
        "created_at": comment.created_at,
        "updated_at": comment.updated_at,
        "html_url": f"{fake.base_url}/{comment.repo}/issues/{comment.number}"
        f"#issuecomment-{comment.id}",
    }


def pull_json(fake: FakeForge, repo_name: str, issue: Issue) -> Json:
    assert issue.pull is not None
    repo = fake.repos[repo_name]
    head, base = issue.pull["head"], issue.pull["base"]
    data = issue_json(fake, repo_name, issue)
    data.pop("pull_request", None)
    data |= {
        "head": {
            "ref": head,
            "sha": fake.branch_sha(repo_name, head) or "",
            "label": f"{repo.owner}:{head}",
            "repo": repo_json(fake, repo),
        },
        "base": {
            "ref": base,
            "sha": fake.branch_sha(repo_name, base) or "",
            "label": f"{repo.owner}:{base}",
            "repo": repo_json(fake, repo),
        },
    }
    if fake.kind == "github":
        data["draft"] = issue.pull["draft"]
    return data


# -- helpers ------------------------------------------------------------------------------


def paged(ctx: Ctx, items: list[Json], *, etag: bool = False) -> Response:
    size_key = "per_page" if ctx.github else "limit"
    size = min(int(ctx.query.get(size_key, "30")), ctx.fake.page_size_cap)
    page = int(ctx.query.get("page", "1"))
    chunk = items[(page - 1) * size : page * size]
    headers = {}
    if page * size < len(items):
        query = {**ctx.query, "page": str(page + 1)}
        headers["Link"] = f'<{ctx.url}?{urlencode(query)}>; rel="next"'
    if etag and ctx.github:
        tag = '"' + hashlib.sha1(json.dumps([chunk, page]).encode()).hexdigest() + '"'  # noqa: S324
        headers["ETag"] = tag
        if ctx.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
    return JSONResponse(chunk, headers=headers)


def body_text(ctx: Ctx, key: str) -> str | None:
    value = ctx.body.get(key) if isinstance(ctx.body, dict) else None
    return value if isinstance(value, str) and value else None


def add_label_event(ctx: Ctx, issue: Issue, action: str, label_id: int) -> None:
    from tests.fakes.forge import BOT, now

    issue.events.append((action, label_id, BOT, now()))


# -- handlers -----------------------------------------------------------------------------


def get_repo(ctx: Ctx) -> Response:
    return JSONResponse(repo_json(ctx.fake, ctx.repo))


def list_issues(ctx: Ctx) -> Response:
    state = ctx.query.get("state", "open")
    wanted = [name for name in ctx.query.get("labels", "").split(",") if name]
    kind = ctx.query.get("type", "")
    items = []
    for issue in sorted(ctx.repo.issues.values(), key=lambda i: -i.number):
        names = {ctx.repo.labels[i]["name"] for i in issue.labels}
        if state != "all" and issue.state != state:
            continue
        if not set(wanted) <= names:
            continue
        if (kind == "issues" and issue.pull) or (kind == "pulls" and not issue.pull):
            continue
        items.append(issue_json(ctx.fake, ctx.repo.name, issue))
    return paged(ctx, items, etag=True)


def get_issue(ctx: Ctx) -> Response:
    issue = ctx.issue()
    if issue is None:
        return error(404, "Not Found")
    return JSONResponse(issue_json(ctx.fake, ctx.repo.name, issue))


def comments(ctx: Ctx) -> Response:
    issue = ctx.issue()
    if issue is None:
        return error(404, "Not Found")
    if ctx.body is None:
        return paged(ctx, [comment_json(ctx.fake, ctx.fake.comments[i]) for i in issue.comments])
    text = body_text(ctx, "body")
    if text is None:
        return error(422, "Validation Failed", errors=[{"field": "body", "code": "missing"}])
    from tests.fakes.forge import BOT

    made = ctx.fake.add_comment(ctx.repo.name, issue.number, text, BOT)
    return JSONResponse(comment_json(ctx.fake, made), 201)


def edit_comment(ctx: Ctx) -> Response:
    from tests.fakes.forge import now

    comment = ctx.fake.comments.get(int(ctx.params["id"]))
    if comment is None or comment.repo != ctx.repo.name:
        return error(404, "Not Found")
    text = body_text(ctx, "body")
    if text is None:
        return error(422, "Validation Failed", errors=[{"field": "body", "code": "missing"}])
    comment.body, comment.updated_at = text, now()
    return JSONResponse(comment_json(ctx.fake, comment))


def issue_labels(ctx: Ctx) -> Response:
    issue = ctx.issue()
    if issue is None:
        return error(404, "Not Found")
    if ctx.body is not None:
        values = ctx.body.get("labels") if isinstance(ctx.body, dict) else ctx.body
        if not isinstance(values, list):
            return error(422, "Invalid request: labels must be a list")
        ids = []
        for value in values:
            if isinstance(value, str) and not ctx.github and ctx.fake.old_gitea:
                return error(
                    422,
                    "json: cannot unmarshal string into Go struct field "
                    "IssueLabelsOption.labels of type int64",
                )
            if isinstance(value, int) and not isinstance(value, bool) and not ctx.github:
                if value not in ctx.repo.labels:
                    return error(422, f"label {value} does not exist")
                ids.append(value)
            elif isinstance(value, str):
                try:
                    ids.append(ctx.fake.label_id(ctx.repo.name, value, create=ctx.github))
                except KeyError:
                    return error(422, f"label does not exist [name: {value}]")
            else:
                return error(422, "Validation Failed: labels are names")
        for label_id in ids:
            if label_id not in issue.labels:
                issue.labels.append(label_id)
                add_label_event(ctx, issue, "labeled", label_id)
    return JSONResponse([ctx.repo.labels[i] for i in issue.labels])


def remove_issue_label(ctx: Ctx) -> Response:
    issue = ctx.issue()
    if issue is None:
        return error(404, "Not Found")
    value = str(ctx.params["label"])
    try:
        if ctx.github:
            label_id = ctx.fake.label_id(ctx.repo.name, value)
        else:
            label_id = int(value) if value.isdigit() else ctx.fake.label_id(ctx.repo.name, value)
    except KeyError:
        return error(404, "Label does not exist")
    if label_id not in ctx.repo.labels or (ctx.github and label_id not in issue.labels):
        return error(404, "Label does not exist")
    if label_id in issue.labels:
        issue.labels.remove(label_id)
        add_label_event(ctx, issue, "unlabeled", label_id)
    if ctx.github:
        return JSONResponse([ctx.repo.labels[i] for i in issue.labels])
    return Response(status_code=204)


def repo_labels(ctx: Ctx) -> Response:
    if ctx.body is None:
        return paged(ctx, list(ctx.repo.labels.values()))
    name = body_text(ctx, "name")
    if name is None:
        return error(422, "Validation Failed: name is required")
    if any(label["name"] == name for label in ctx.repo.labels.values()):
        return error(422, "Validation Failed: already_exists")
    color = body_text(ctx, "color") or "ededed"
    return JSONResponse(ctx.fake.create_label(ctx.repo.name, name, color), 201)


def label_events(ctx: Ctx) -> Response:
    issue = ctx.issue()
    if issue is None:
        return error(404, "Not Found")
    items: list[Json] = []
    for index, (action, label_id, login, when) in enumerate(issue.events):
        label = ctx.repo.labels[label_id]
        if ctx.github:
            items.append(
                {
                    "id": index + 1,
                    "event": action,
                    "label": {"name": label["name"], "color": label["color"]},
                    "actor": user_json(login),
                    "created_at": when,
                }
            )
        else:
            body = "1" if action == "labeled" else ""
            items.append(
                {
                    "id": index + 1,
                    "type": "label",
                    "body": body,
                    "label": label,
                    "user": user_json(login),
                    "created_at": when,
                }
            )
    if not ctx.github:
        items += [
            {"type": "comment", **comment_json(ctx.fake, ctx.fake.comments[i])}
            for i in issue.comments
        ]
    return paged(ctx, items)


def events(ctx: Ctx) -> Response:
    return label_events(ctx) if ctx.github else error(404, "Not Found")


def timeline(ctx: Ctx) -> Response:
    return error(404, "Not Found") if ctx.github else label_events(ctx)


def pulls(ctx: Ctx) -> Response:
    if ctx.body is not None:
        return create_pull(ctx)
    state = ctx.query.get("state", "open")
    head = ctx.query.get("head", "") if ctx.github else ""
    items = []
    for issue in sorted(ctx.repo.issues.values(), key=lambda i: -i.number):
        if issue.pull is None or (state != "all" and issue.state != state):
            continue
        if head and head != f"{ctx.repo.owner}:{issue.pull['head']}":
            continue
        items.append(pull_json(ctx.fake, ctx.repo.name, issue))
    return paged(ctx, items)


def create_pull(ctx: Ctx) -> Response:
    from tests.fakes.forge import BOT, Issue, now

    title, head, base = (body_text(ctx, key) for key in ("title", "head", "base"))
    if title is None or head is None or base is None:
        return error(422, "Validation Failed: title, head and base are required")
    owner, _, branch = head.rpartition(":")
    if owner and owner != ctx.repo.owner:
        return error(422, "Validation Failed: the fake forge has no forks")
    head_sha = ctx.fake.branch_sha(ctx.repo.name, branch)
    base_sha = ctx.fake.branch_sha(ctx.repo.name, base)
    if head_sha is None or base_sha is None:
        field = "head" if head_sha is None else "base"
        return error(422, "Validation Failed", errors=[{"field": field, "code": "invalid"}])
    for issue in ctx.repo.issues.values():
        if issue.pull and issue.state == "open" and issue.pull["head"] == branch:
            if ctx.github:
                message = f"A pull request already exists for {ctx.repo.owner}:{branch}."
                return error(422, "Validation Failed", errors=[{"message": message}])
            return error(409, "pull request already exists for these targets")
    if head_sha == base_sha:
        return error(422, "Validation Failed", errors=[{"message": "No commits between"}])
    draft = bool(ctx.body.get("draft")) if ctx.github else title.startswith(("WIP:", "[WIP]"))
    number = max([0, *ctx.repo.issues]) + 1
    issue = Issue(
        number,
        ctx.fake.next_id(),
        title,
        body_text(ctx, "body") or "",
        BOT,
        pull={"head": branch, "base": base, "draft": draft},
        created_at=now(),
    )
    ctx.repo.issues[number] = issue
    return JSONResponse(pull_json(ctx.fake, ctx.repo.name, issue), 201)


def collaborators(ctx: Ctx) -> Response:
    items = []
    for login, permission in ctx.repo.collaborators.items():
        item = user_json(login)
        if ctx.github:
            item["role_name"] = permission
        items.append(item)
    return paged(ctx, items)


def permission(ctx: Ctx) -> Response:
    if not ctx.github and ctx.fake.old_gitea:
        return error(404, "Not Found")
    user = str(ctx.params["user"])
    if user == ctx.repo.owner:
        level = "admin" if ctx.github else "owner"
    else:
        level = ctx.repo.collaborators.get(user, "read")
    return JSONResponse({"permission": level, "role_name": level, "user": user_json(user)})


def get_branch(ctx: Ctx) -> Response:
    name = str(ctx.params["branch"])
    sha = ctx.fake.branch_sha(ctx.repo.name, f"refs/heads/{name}")
    if sha is None:
        return error(404, "Branch not found")
    return JSONResponse({"name": name, "commit": {"sha": sha}})


def combined_status(ctx: Ctx) -> Response:
    sha = ctx.fake.branch_sha(ctx.repo.name, str(ctx.params["ref"]))
    if sha is None:
        return error(404, f"No commit found for SHA: {ctx.params['ref']}")
    latest: dict[str, Json] = {}
    for status in ctx.repo.statuses.get(sha, []):
        latest[status["context"]] = status
    states = [status["state"] for status in latest.values()]
    if any(state in ("failure", "error") for state in states):
        combined = "failure" if ctx.github else "error" if "error" in states else "failure"
    elif any(state == "pending" for state in states):
        combined = "pending"
    elif states:
        combined = "success"
    else:
        combined = "pending" if ctx.github else ""
    key = "state" if ctx.github else "status"
    statuses = [
        {k: v for k, v in status.items() if k != "state"} | {key: status["state"]}
        for status in latest.values()
    ]
    return JSONResponse(
        {"state": combined, "sha": sha, "total_count": len(statuses), "statuses": statuses}
    )


def check_runs(ctx: Ctx) -> Response:
    if not ctx.github:
        return error(404, "Not Found")
    sha = ctx.fake.branch_sha(ctx.repo.name, str(ctx.params["ref"]))
    if sha is None:
        return error(404, f"No commit found for SHA: {ctx.params['ref']}")
    runs = ctx.repo.check_runs.get(sha, [])
    return JSONResponse({"total_count": len(runs), "check_runs": runs})


R = "/repos/{owner}/{name}"
ROUTES: list[tuple[str, Handler, list[str]]] = [
    (R, get_repo, ["GET"]),
    (R + "/issues", list_issues, ["GET"]),
    (R + "/issues/comments/{id:int}", edit_comment, ["PATCH"]),
    (R + "/issues/{number:int}", get_issue, ["GET"]),
    (R + "/issues/{number:int}/comments", comments, ["GET", "POST"]),
    (R + "/issues/{number:int}/labels", issue_labels, ["GET", "POST"]),
    (R + "/issues/{number:int}/labels/{label}", remove_issue_label, ["DELETE"]),
    (R + "/issues/{number:int}/events", events, ["GET"]),
    (R + "/issues/{number:int}/timeline", timeline, ["GET"]),
    (R + "/labels", repo_labels, ["GET", "POST"]),
    (R + "/pulls", pulls, ["GET", "POST"]),
    (R + "/collaborators", collaborators, ["GET"]),
    (R + "/collaborators/{user}/permission", permission, ["GET"]),
    (R + "/branches/{branch:path}", get_branch, ["GET"]),
    (R + "/commits/{ref:path}/status", combined_status, ["GET"]),
    (R + "/commits/{ref:path}/check-runs", check_runs, ["GET"]),
]


def endpoint(fake: FakeForge, handler: Handler) -> Callable[[Request], Any]:
    """The token check, failure injection, repository lookup and recording around a handler."""

    async def run(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            fake.record(request, True, raw, 400)
            return error(400, "Problems parsing JSON")
        _scheme, user = fake.authorized_user(request.headers.get("authorization", ""))
        if user is None:
            fake.record(request, False, body, 401)
            return error(401, "Bad credentials" if fake.kind == "github" else "token is required")
        failure = fake.take_failure(request.method, request.url.path)
        if failure is not None:
            fake.record(request, True, body, failure.status_code)
            return failure
        name = f"{request.path_params['owner']}/{request.path_params['name']}"
        with fake.lock:
            repo = fake.repos.get(name)
            if repo is None:
                response: Response = error(404, "Not Found")
            else:
                ctx = Ctx(
                    fake,
                    repo,
                    request.path_params,
                    dict(request.query_params),
                    request.headers,
                    body,
                    str(request.url.replace(query="")),
                )
                response = handler(ctx)
        fake.record(request, True, body, response.status_code)
        return response

    return run
