"""Every forge client call, for GitHub and Forgejo, against the fake forge (real HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentfarm.pipeline import forges
from agentfarm.pipeline.forges import types
from tests.fakes.forge import FakeForge
from tests.unit.forge_helpers import REPO, forge, push_branch

__all__ = ["forge"]


class Sleeps:
    """Virtual time: records the pauses asked for instead of sleeping."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(forge: FakeForge, sleeps: Sleeps) -> AsyncIterator[types.ForgeClient]:
    made = forges.make_client(forge.kind, forge.api_url, forges.Token(forge.token), sleep=sleeps)
    yield made
    await made.aclose()


async def test_each_kind_sends_its_auth_scheme(forge: FakeForge, client: types.ForgeClient) -> None:
    await client.get_issue(REPO, forge.open_issue(REPO, "x"))
    assert forge.requests[-1].auth == ("Bearer" if forge.kind == "github" else "token")
    assert forge.requests[-1].authorized


async def test_github_enterprise_lives_under_api_v3(tmp_path: Path) -> None:
    with FakeForge(tmp_path, kind="github", api_prefix="/api/v3") as fake:
        fake.create_repo(REPO)
        number = fake.open_issue(REPO, "x", labels=["agentfarm"])
        client = forges.make_client("github", fake.api_url, forges.Token(fake.token))
        issues = await client.list_labeled_issues(REPO, "agentfarm")
        await client.aclose()
    assert [i.number for i in issues] == [number]
    assert fake.requests[-1].path == f"/api/v3/repos/{REPO}/issues"


async def test_labeled_issues_skip_pulls_and_other_labels(
    forge: FakeForge, client: types.ForgeClient, tmp_path: Path
) -> None:
    wanted = forge.open_issue(REPO, "Add hello", "body text", by="bob", labels=["agentfarm"])
    forge.open_issue(REPO, "other", labels=["bug"])
    push_branch(forge, tmp_path, "feature")
    pull = await client.open_pull(
        REPO, title="PR", head="feature", base="main", body="", draft=False
    )
    await client.add_labels(REPO, pull.number, ["agentfarm"])
    issues = await client.list_labeled_issues(REPO, "agentfarm")
    assert [(i.number, i.title, i.body, i.author, i.labels) for i in issues] == [
        (wanted, "Add hello", "body text", "bob", ("agentfarm",))
    ]


async def test_labeled_issues_follow_pages(forge: FakeForge, client: types.ForgeClient) -> None:
    forge.page_size_cap = 2
    numbers = {forge.open_issue(REPO, f"n{i}", labels=["agentfarm"]) for i in range(5)}
    assert {i.number for i in await client.list_labeled_issues(REPO, "agentfarm")} == numbers


async def test_polling_again_is_a_conditional_request(
    forge: FakeForge, client: types.ForgeClient
) -> None:
    number = forge.open_issue(REPO, "x", labels=["agentfarm"])
    first = await client.list_labeled_issues(REPO, "agentfarm")
    second = await client.list_labeled_issues(REPO, "agentfarm")
    assert first == second
    listed = [r for r in forge.requests if r.path.endswith("/issues")]
    if forge.kind == "github":
        assert [r.status for r in listed] == [200, 304]
    forge.unlabel(REPO, number, "agentfarm", by="alice")
    assert await client.list_labeled_issues(REPO, "agentfarm") == []


async def test_comments_round_trip(forge: FakeForge, client: types.ForgeClient) -> None:
    number = forge.open_issue(REPO, "x")
    forge.comment(REPO, number, "from a human", by="bob")
    made = await client.create_comment(REPO, number, "- [ ] queued")
    edited = await client.edit_comment(REPO, made.id, "- [x] queued\n- [ ] running")
    comments = await client.list_comments(REPO, number)
    assert edited.id == made.id
    assert [(c.author, c.body) for c in comments] == [
        ("bob", "from a human"),
        ("agentfarm-bot", "- [x] queued\n- [ ] running"),
    ]


async def test_labels_are_added_and_removed_idempotently(
    forge: FakeForge, client: types.ForgeClient
) -> None:
    number = forge.open_issue(REPO, "x", labels=["agentfarm"])
    await client.add_labels(REPO, number, ["agentfarm:in-progress"])  # not yet a repo label
    await client.add_labels(REPO, number, ["agentfarm:in-progress"])
    assert forge.issue_labels(REPO, number) == ["agentfarm", "agentfarm:in-progress"]
    await client.remove_label(REPO, number, "agentfarm:in-progress")
    await client.remove_label(REPO, number, "agentfarm:in-progress")
    await client.remove_label(REPO, number, "never-existed")
    assert forge.issue_labels(REPO, number) == ["agentfarm"]


async def test_old_gitea_gets_label_ids(tmp_path: Path, sleeps: Sleeps) -> None:
    with FakeForge(tmp_path, kind="forgejo", old_gitea=True) as fake:
        fake.create_repo(REPO)
        number = fake.open_issue(REPO, "x")
        client = forges.make_client("gitea", fake.api_url, forges.Token(fake.token), sleep=sleeps)
        await client.add_labels(REPO, number, ["bug", "agentfarm:done"])
        await client.remove_label(REPO, number, "bug")
        await client.aclose()
        assert fake.issue_labels(REPO, number) == ["agentfarm:done"]
        posted = [r.body for r in fake.requests if r.method == "POST" and "issues" in r.path]
        assert posted[0] == {"labels": ["bug", "agentfarm:done"]}  # refused: names
        assert all(isinstance(i, int) for i in posted[1]["labels"])


async def test_pull_requests_are_found_and_opened(
    forge: FakeForge, client: types.ForgeClient, tmp_path: Path
) -> None:
    branch = "agentfarm/issue-3-hello"
    assert await client.find_open_pull(REPO, branch) is None
    sha = push_branch(forge, tmp_path, branch)
    pull = await client.open_pull(
        REPO, title="Add hello", head=branch, base="main", body="Closes #3", draft=True
    )
    found = await client.find_open_pull(REPO, branch)
    assert found == pull
    assert (pull.head, pull.head_sha, pull.base, pull.draft) == (branch, sha, "main", True)
    (recorded,) = forge.pulls(REPO)
    if forge.kind == "github":
        assert (recorded.title, recorded.pull) == (
            "Add hello",
            {"head": branch, "base": "main", "draft": True},
        )
    else:
        assert recorded.title == "WIP: Add hello"
    assert recorded.body == "Closes #3"


async def test_opening_a_pull_for_a_missing_branch_is_permanent(
    client: types.ForgeClient,
) -> None:
    with pytest.raises(forges.errors.PermanentForgeError) as caught:
        await client.open_pull(REPO, title="x", head="nope", base="main", body="", draft=False)
    assert caught.value.status == 422
    assert "POST /repos/alice/proj/pulls answered 422" in str(caught.value)


async def test_who_applied_the_label(forge: FakeForge, client: types.ForgeClient) -> None:
    number = forge.open_issue(REPO, "x")
    assert await client.label_applied_by(REPO, number, "agentfarm") is None
    forge.label(REPO, number, "agentfarm", by="mallory")
    forge.unlabel(REPO, number, "agentfarm", by="alice")
    forge.label(REPO, number, "bug", by="carol")
    forge.label(REPO, number, "agentfarm", by="bob")
    assert await client.label_applied_by(REPO, number, "agentfarm") == "bob"


async def test_may_write(forge: FakeForge, client: types.ForgeClient) -> None:
    forge.add_collaborator(REPO, "bob", "write")
    forge.add_collaborator(REPO, "dave", "admin")
    forge.add_collaborator(REPO, "carol", "read")
    users = ("alice", "bob", "carol", "dave", "mallory")
    verdicts = {user: await client.may_write(REPO, user) for user in users}
    assert verdicts == {"alice": True, "bob": True, "carol": False, "dave": True, "mallory": False}


async def test_may_write_on_old_gitea_trusts_only_the_owner(tmp_path: Path) -> None:
    with FakeForge(tmp_path, kind="forgejo", old_gitea=True) as fake:
        fake.create_repo(REPO)
        fake.add_collaborator(REPO, "carol", "read")
        client = forges.make_client("forgejo", fake.api_url, forges.Token(fake.token))
        verdicts = [await client.may_write(REPO, user) for user in ("alice", "carol")]
        await client.aclose()
    assert verdicts == [True, False]


async def test_combined_status(forge: FakeForge, client: types.ForgeClient, tmp_path: Path) -> None:
    sha = push_branch(forge, tmp_path, "agentfarm/issue-1-x")
    empty = await client.combined_status(REPO, "agentfarm/issue-1-x")
    assert (empty.sha, empty.state, empty.checks) == (sha, "none", ())
    forge.set_status(REPO, sha, "ci/lint", "success")
    forge.set_status(REPO, sha, "ci/test", "pending")
    assert (await client.combined_status(REPO, sha)).state == "pending"
    forge.set_status(REPO, sha, "ci/test", "error", target_url="http://127.0.0.1/log/1")
    if forge.kind == "github":
        forge.add_check_run(REPO, sha, "build", "failure", details_url="http://127.0.0.1/run/2")
        forge.add_check_run(REPO, sha, "docs", None)
    status = await client.combined_status(REPO, "agentfarm/issue-1-x")
    assert status.state == "failure"
    failing = {(c.name, c.url) for c in status.failing}
    expected = {("ci/test", "http://127.0.0.1/log/1")}
    if forge.kind == "github":
        expected.add(("build", "http://127.0.0.1/run/2"))
        assert ("docs", "pending") in {(c.name, c.state) for c in status.checks}
    assert failing == expected


async def test_a_missing_issue_is_not_found(client: types.ForgeClient) -> None:
    with pytest.raises(forges.errors.ForgeNotFoundError, match="check the repository name"):
        await client.get_issue(REPO, 999)


async def test_the_repository_names_its_default_branch(
    forge: FakeForge, client: types.ForgeClient
) -> None:
    forge.create_repo("alice/other", default_branch="trunk")
    assert (await client.get_repo(REPO)).default_branch == "main"
    assert (await client.get_repo("alice/other")).default_branch == "trunk"


async def test_whether_a_branch_exists(
    forge: FakeForge, client: types.ForgeClient, tmp_path: Path
) -> None:
    push_branch(forge, tmp_path, "agentfarm/issue-1-x")
    assert await client.branch_exists(REPO, "agentfarm/issue-1-x")
    assert await client.branch_exists(REPO, "main")
    assert not await client.branch_exists(REPO, "agentfarm/issue-1-x-2")
