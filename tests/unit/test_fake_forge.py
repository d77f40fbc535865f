"""The fake forge itself: real git over HTTP behind the token, the documented REST shapes of
GitHub and Forgejo, failure injection and signed webhook deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

import httpx
import pytest

from tests.fakes.forge import FakeForge
from tests.unit.forge_helpers import (
    REPO,
    forge,
    git_env,
    push_branch,
    receiver,
    run_git,
)
from tests.unit.forge_helpers import Receiver as _Receiver

__all__ = ["forge", "receiver"]


def api(fake: FakeForge, token: str | None = None) -> httpx.Client:
    scheme = "Bearer" if fake.kind == "github" else "token"
    return httpx.Client(
        base_url=fake.api_url,
        headers={"Authorization": f"{scheme} {token or fake.token}"},
    )


# -- git over HTTP ------------------------------------------------------------------------


def test_clone_and_push_are_real_git_over_http(forge: FakeForge, tmp_path: Path) -> None:
    sha = push_branch(forge, tmp_path, "agentfarm/issue-1-hello")
    assert forge.branch_sha(REPO, "agentfarm/issue-1-hello") == sha
    git = [r for r in forge.requests if r.path.startswith(f"/{REPO}.git/")]
    assert {r.path.rsplit("/", 1)[1] for r in git} >= {
        "refs",
        "git-upload-pack",
        "git-receive-pack",
    }
    # git asks without credentials first, is told 401, then sends the token as password
    assert all(r.authorized == (r.auth == "Basic") for r in git)


def test_a_large_push_is_streamed_whole(forge: FakeForge, tmp_path: Path) -> None:
    # Over http.postBuffer (1 MiB) git sends the pack chunked, after a 4-byte probe.
    env = git_env(tmp_path / "home")
    clone = tmp_path / "clone"
    url = forge.git_url(REPO, token=forge.token)
    assert run_git("clone", "-q", url, str(clone), cwd=tmp_path, env=env).returncode == 0
    (clone / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    run_git("add", "-A", cwd=clone, env=env)
    run_git("commit", "-qm", "big", cwd=clone, env=env)
    pushed = run_git("push", "-q", "origin", "HEAD:refs/heads/big", cwd=clone, env=env)
    assert pushed.returncode == 0, pushed.stderr
    head = run_git("rev-parse", "HEAD", cwd=clone, env=env).stdout.strip()
    assert forge.branch_sha(REPO, "big") == head
    again = tmp_path / "again"
    assert (
        run_git("clone", "-q", "-b", "big", url, str(again), cwd=tmp_path, env=env).returncode == 0
    )
    assert (again / "big.bin").read_bytes() == (clone / "big.bin").read_bytes()


def test_git_refuses_a_wrong_token(forge: FakeForge, tmp_path: Path) -> None:
    env = git_env(tmp_path / "home")
    url = forge.git_url(REPO, token="not-the-token")
    done = run_git("clone", "-q", url, str(tmp_path / "c"), cwd=tmp_path, env=env)
    assert done.returncode != 0
    assert "Authentication failed" in done.stderr
    assert not any(r.authorized for r in forge.requests)


def test_git_without_credentials_is_asked_for_basic_auth(forge: FakeForge) -> None:
    response = httpx.get(f"{forge.base_url}/{REPO}.git/info/refs?service=git-upload-pack")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")


# -- REST ---------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["", "Bearer wrong", "token wrong", "Basic Zm9vOmJhcg=="])
def test_every_api_call_checks_the_token(forge: FakeForge, header: str) -> None:
    response = httpx.get(f"{forge.api_url}/repos/{REPO}/issues", headers={"Authorization": header})
    assert response.status_code == 401
    assert forge.requests[-1].authorized is False


def test_each_kind_wants_its_own_auth_scheme(forge: FakeForge) -> None:
    other = "token" if forge.kind == "github" else "Bearer"
    response = httpx.get(
        f"{forge.api_url}/repos/{REPO}", headers={"Authorization": f"{other} {forge.token}"}
    )
    assert response.status_code == 401


def test_issue_list_filters_by_label_and_state(forge: FakeForge, tmp_path: Path) -> None:
    wanted = forge.open_issue(REPO, "wanted", labels=["agentfarm"])
    forge.open_issue(REPO, "unlabelled")
    closed = forge.open_issue(REPO, "closed", labels=["agentfarm"])
    forge.close_issue(REPO, closed)
    push_branch(forge, tmp_path, "feature")
    with api(forge) as client:
        pull = client.post(
            f"/repos/{REPO}/pulls", json={"title": "PR", "head": "feature", "base": "main"}
        ).json()
        client.post(f"/repos/{REPO}/issues/{pull['number']}/labels", json={"labels": ["bug"]})
        client.post(f"/repos/{REPO}/issues/{wanted}/labels", json={"labels": ["bug"]})
        query = {"labels": "agentfarm,bug", "state": "open"}
        numbers = [i["number"] for i in client.get(f"/repos/{REPO}/issues", params=query).json()]
        everything = client.get(f"/repos/{REPO}/issues", params={"labels": "bug"}).json()
        only_issues = client.get(
            f"/repos/{REPO}/issues", params={"labels": "bug", "type": "issues"}
        ).json()
    assert numbers == [wanted]
    by_number = {item["number"]: item for item in everything}
    if forge.kind == "github":
        # GitHub lists pull requests as issues, marked with a `pull_request` key
        assert set(by_number) == {wanted, pull["number"]}
        assert "pull_request" in by_number[pull["number"]]
        assert "pull_request" not in by_number[wanted]
    else:
        assert by_number[wanted]["pull_request"] is None
        assert [item["number"] for item in only_issues] == [wanted]


def test_issue_list_is_paged_with_link_headers(forge: FakeForge) -> None:
    forge.page_size_cap = 2
    for n in range(5):
        forge.open_issue(REPO, f"issue {n}")
    with api(forge) as client:
        first = client.get(f"/repos/{REPO}/issues")
        assert len(first.json()) == 2
        assert 'rel="next"' in first.headers["link"]


def test_github_issue_list_answers_304_to_a_matching_etag(tmp_path: Path) -> None:
    with FakeForge(tmp_path, kind="github") as fake:
        fake.create_repo(REPO)
        number = fake.open_issue(REPO, "x", labels=["agentfarm"])
        with api(fake) as client:
            first = client.get(f"/repos/{REPO}/issues", params={"labels": "agentfarm"})
            etag = first.headers["etag"]
            again = client.get(
                f"/repos/{REPO}/issues",
                params={"labels": "agentfarm"},
                headers={"If-None-Match": etag},
            )
            assert again.status_code == 304
            fake.label(REPO, number, "bug", by="alice")
            changed = client.get(
                f"/repos/{REPO}/issues",
                params={"labels": "agentfarm"},
                headers={"If-None-Match": etag},
            )
            assert changed.status_code == 200


def test_comments_are_created_listed_and_edited(forge: FakeForge) -> None:
    number = forge.open_issue(REPO, "x")
    with api(forge) as client:
        made = client.post(f"/repos/{REPO}/issues/{number}/comments", json={"body": "queued"})
        assert made.status_code == 201
        cid = made.json()["id"]
        edited = client.patch(f"/repos/{REPO}/issues/comments/{cid}", json={"body": "running"})
        assert edited.json()["body"] == "running"
        listed = client.get(f"/repos/{REPO}/issues/{number}/comments").json()
        assert client.post(f"/repos/{REPO}/issues/{number}/comments", json={}).status_code == 422
    assert [(c["id"], c["body"], c["user"]["login"]) for c in listed] == [
        (cid, "running", "agentfarm-bot")
    ]


def test_labels_by_name_and_removal(forge: FakeForge) -> None:
    number = forge.open_issue(REPO, "x")
    with api(forge) as client:
        added = client.post(f"/repos/{REPO}/issues/{number}/labels", json={"labels": ["bug"]})
        assert [label["name"] for label in added.json()] == ["bug"]
        target = "bug" if forge.kind == "github" else str(forge.label_id(REPO, "bug"))
        assert client.delete(f"/repos/{REPO}/issues/{number}/labels/{target}").is_success
        repo_labels = client.get(f"/repos/{REPO}/labels").json()
    assert forge.issue_labels(REPO, number) == []
    assert {label["name"] for label in repo_labels} >= {"agentfarm", "bug"}


def test_old_gitea_accepts_label_ids_only(tmp_path: Path) -> None:
    with FakeForge(tmp_path, kind="forgejo", old_gitea=True) as fake:
        fake.create_repo(REPO)
        number = fake.open_issue(REPO, "x")
        with api(fake) as client:
            path = f"/repos/{REPO}/issues/{number}/labels"
            assert client.post(path, json={"labels": ["bug"]}).status_code == 422
            by_id = client.post(path, json={"labels": [fake.label_id(REPO, "bug")]})
            assert by_id.status_code == 200
        assert fake.issue_labels(REPO, number) == ["bug"]


def test_pull_requests_see_pushed_branches(forge: FakeForge, tmp_path: Path) -> None:
    with api(forge) as client:
        missing = client.post(
            f"/repos/{REPO}/pulls", json={"title": "x", "head": "nope", "base": "main"}
        )
        assert missing.status_code == 422
        sha = push_branch(forge, tmp_path, "agentfarm/issue-1-x")
        title = "Fix it" if forge.kind == "github" else "WIP: Fix it"
        body = {"title": title, "head": "agentfarm/issue-1-x", "base": "main", "draft": True}
        made = client.post(f"/repos/{REPO}/pulls", json=body)
        assert made.status_code == 201
        again = client.post(f"/repos/{REPO}/pulls", json=body)
        listed = client.get(f"/repos/{REPO}/pulls", params={"state": "open"}).json()
    assert again.status_code == (422 if forge.kind == "github" else 409)
    pull = made.json()
    assert (pull["head"]["ref"], pull["head"]["sha"], pull["base"]["ref"]) == (
        "agentfarm/issue-1-x",
        sha,
        "main",
    )
    assert [p["number"] for p in listed] == [pull["number"]]
    assert forge.pulls(REPO)[0].pull == {
        "head": "agentfarm/issue-1-x",
        "base": "main",
        "draft": True,
    }
    # Forgejo has no draft field: the WIP: prefix is the draft
    assert ("draft" in pull) == (forge.kind == "github")


def test_collaborators_and_permissions(forge: FakeForge) -> None:
    forge.add_collaborator(REPO, "bob", "write")
    forge.add_collaborator(REPO, "carol", "read")
    with api(forge) as client:
        listed = client.get(f"/repos/{REPO}/collaborators").json()

        def level(user: str) -> str:
            return client.get(f"/repos/{REPO}/collaborators/{user}/permission").json()["permission"]

        levels = {user: level(user) for user in ("alice", "bob", "carol", "mallory")}
    assert [u["login"] for u in listed] == ["bob", "carol"]  # the owner is not listed
    owner = "admin" if forge.kind == "github" else "owner"
    assert levels == {"alice": owner, "bob": "write", "carol": "read", "mallory": "read"}


def test_label_events_say_who_applied_a_label(forge: FakeForge) -> None:
    number = forge.open_issue(REPO, "x")
    forge.label(REPO, number, "agentfarm", by="bob")
    forge.unlabel(REPO, number, "agentfarm", by="carol")
    path = "events" if forge.kind == "github" else "timeline"
    with api(forge) as client:
        items = client.get(f"/repos/{REPO}/issues/{number}/{path}").json()
        other = "timeline" if forge.kind == "github" else "events"
        assert client.get(f"/repos/{REPO}/issues/{number}/{other}").status_code == 404
    if forge.kind == "github":
        got = [(e["event"], e["label"]["name"], e["actor"]["login"]) for e in items]
        assert got == [("labeled", "agentfarm", "bob"), ("unlabeled", "agentfarm", "carol")]
    else:
        got = [(e["type"], e["body"], e["label"]["name"], e["user"]["login"]) for e in items]
        assert got == [("label", "1", "agentfarm", "bob"), ("label", "", "agentfarm", "carol")]


def test_combined_status_and_check_runs(forge: FakeForge, tmp_path: Path) -> None:
    sha = push_branch(forge, tmp_path, "feature")
    with api(forge) as client:
        empty = client.get(f"/repos/{REPO}/commits/feature/status").json()
        forge.set_status(REPO, "feature", "ci/test", "pending")
        forge.set_status(REPO, sha, "ci/test", "failure", target_url="http://127.0.0.1/log")
        forge.set_status(REPO, sha, "ci/lint", "success")
        combined = client.get(f"/repos/{REPO}/commits/{sha}/status").json()
        runs = client.get(f"/repos/{REPO}/commits/feature/check-runs")
    assert empty["state"] == ("pending" if forge.kind == "github" else "")
    key = "state" if forge.kind == "github" else "status"
    assert combined["state"] == "failure"
    assert {s["context"]: s[key] for s in combined["statuses"]} == {
        "ci/test": "failure",
        "ci/lint": "success",
    }
    assert runs.status_code == (200 if forge.kind == "github" else 404)


def test_failures_and_rate_limits_are_injected(forge: FakeForge) -> None:
    forge.fail_next(1, 502)
    forge.fail_next(1, 429, retry_after=7)
    forge.fail_next(1, 403, reset_in=60)
    with api(forge) as client:
        answers = [client.get(f"/repos/{REPO}") for _ in range(4)]
    assert [a.status_code for a in answers] == [502, 429, 403, 200]
    assert answers[1].headers["retry-after"] == "7"
    assert answers[2].headers["x-ratelimit-remaining"] == "0"
    assert int(answers[2].headers["x-ratelimit-reset"]) > 0


# -- webhooks -----------------------------------------------------------------------------


def test_label_delivery_is_signed_and_sent(forge: FakeForge, receiver: _Receiver) -> None:
    forge.add_webhook(REPO, receiver.url, "hook-secret")
    number = forge.open_issue(REPO, "x")
    (delivery,) = forge.label(REPO, number, "agentfarm", by="bob")
    assert delivery.send().status_code == 202
    headers, body = receiver.received[0]
    digest = hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    payload = json.loads(body)
    assert payload["sender"]["login"] == "bob"
    assert payload["repository"]["full_name"] == REPO
    assert [label["name"] for label in payload["issue"]["labels"]] == ["agentfarm"]
    if forge.kind == "github":
        assert headers["X-Hub-Signature-256"] == f"sha256={digest}"
        assert headers["X-GitHub-Event"] == "issues"
        assert headers["X-GitHub-Delivery"] == delivery.delivery_id
        assert (payload["action"], payload["label"]["name"]) == ("labeled", "agentfarm")
    else:
        assert headers["X-Forgejo-Signature"] == headers["X-Gitea-Signature"] == digest
        assert headers["X-Forgejo-Event"] == "issues"
        assert headers["X-Forgejo-Delivery"] == delivery.delivery_id
        assert payload["action"] == "label_updated"
        assert "label" not in payload


async def test_deliveries_can_be_sent_from_async_tests(
    forge: FakeForge, receiver: _Receiver
) -> None:
    forge.add_webhook(REPO, receiver.url, "s3cret")
    number = forge.open_issue(REPO, "x")
    (delivery,) = forge.comment(REPO, number, "@agentfarm please", by="bob")
    assert (await delivery.asend()).status_code == 202
    assert json.loads(receiver.received[0][1])["comment"]["body"] == "@agentfarm please"


def test_status_deliveries_only_on_github(forge: FakeForge, tmp_path: Path) -> None:
    forge.add_webhook(REPO, "http://127.0.0.1:9/hooks", "s3cret")
    push_branch(forge, tmp_path, "feature")
    deliveries = forge.set_status(REPO, "feature", "ci", "failure")
    assert len(deliveries) == (1 if forge.kind == "github" else 0)
