"""Webhook signatures and deliveries -> triggers, on deliveries the fake forge signs itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentfarm.pipeline.forges import webhooks
from tests.fakes.forge import Delivery, FakeForge
from tests.unit.forge_helpers import REPO, forge, push_branch

__all__ = ["forge"]
SECRET = "webhook-secret-42"
HOOK = "http://127.0.0.1:9/hooks"


@pytest.fixture
def hooked(forge: FakeForge) -> FakeForge:
    forge.add_webhook(REPO, HOOK, SECRET)
    return forge


def parse(fake: FakeForge, delivery: Delivery, **kwargs: object) -> webhooks.Trigger | None:
    return webhooks.parse_delivery(
        fake.kind,
        delivery.headers,
        delivery.body,
        trigger_label="agentfarm",
        **kwargs,  # type: ignore[arg-type]
    )


def test_signatures_verify(hooked: FakeForge) -> None:
    (delivery,) = hooked.label(REPO, hooked.open_issue(REPO, "x"), "agentfarm", by="bob")
    assert webhooks.verify_signature(hooked.kind, SECRET, delivery.body, delivery.headers)
    lower = {k.lower(): v for k, v in delivery.headers.items()}
    assert webhooks.verify_signature(hooked.kind, SECRET, delivery.body, lower)


def test_wrong_missing_or_tampered_signatures_fail(hooked: FakeForge) -> None:
    (delivery,) = hooked.label(REPO, hooked.open_issue(REPO, "x"), "agentfarm", by="bob")
    kind, body, headers = hooked.kind, delivery.body, delivery.headers
    assert not webhooks.verify_signature(kind, "another-secret", body, headers)
    assert not webhooks.verify_signature(kind, "", body, headers)
    assert not webhooks.verify_signature(kind, SECRET, body + b" ", headers)
    unsigned = {k: v for k, v in headers.items() if "Signature" not in k}
    assert not webhooks.verify_signature(kind, SECRET, body, unsigned)


def test_each_kind_has_its_own_signature_format() -> None:
    body = b'{"a": 1}'
    github = webhooks.sign("github", SECRET, body)
    bare = webhooks.sign("forgejo", SECRET, body)
    assert github == f"sha256={bare}"
    # a bare hex under GitHub's header, or a prefixed one under Forgejo's, is refused
    assert not webhooks.verify_signature("github", SECRET, body, {"X-Hub-Signature-256": bare})
    assert not webhooks.verify_signature("forgejo", SECRET, body, {"X-Forgejo-Signature": github})
    assert webhooks.verify_signature("gitea", SECRET, body, {"X-Gitea-Signature": bare})


def test_a_label_becomes_a_labeled_trigger(hooked: FakeForge) -> None:
    number = hooked.open_issue(REPO, "x", labels=["bug"])
    (delivery,) = hooked.label(REPO, number, "agentfarm", by="bob")
    trigger = parse(hooked, delivery, known_labels=["bug"])
    assert trigger == webhooks.Trigger(
        kind="labeled",
        repo=REPO,
        number=number,
        actor="bob",
        delivery_id=delivery.delivery_id,
        label="agentfarm",
        labels=("bug", "agentfarm"),
    )


def test_removing_the_label_is_unlabeled(hooked: FakeForge) -> None:
    number = hooked.open_issue(REPO, "x", labels=["agentfarm"])
    (delivery,) = hooked.unlabel(REPO, number, "agentfarm", by="carol")
    trigger = parse(hooked, delivery, known_labels=["agentfarm"])
    assert trigger is not None
    assert (trigger.kind, trigger.actor, trigger.labels) == ("unlabeled", "carol", ())
    if hooked.kind == "forgejo":
        assert delivery.payload["action"] == "label_cleared"


def test_another_label_changing_is_no_trigger(hooked: FakeForge) -> None:
    number = hooked.open_issue(REPO, "x", labels=["agentfarm"])
    (delivery,) = hooked.label(REPO, number, "bug", by="bob")
    assert parse(hooked, delivery, known_labels=["agentfarm"]) is None


def test_forgejo_label_updated_without_known_labels_uses_presence(tmp_path: Path) -> None:
    with FakeForge(tmp_path, kind="forgejo") as fake:
        fake.create_repo(REPO)
        fake.add_webhook(REPO, HOOK, SECRET)
        number = fake.open_issue(REPO, "x")
        (delivery,) = fake.label(REPO, number, "agentfarm", by="bob")
        assert "label" not in delivery.payload
        trigger = parse(fake, delivery)
        assert trigger is not None and trigger.kind == "labeled"


def test_a_comment_on_a_pull_request(hooked: FakeForge, tmp_path: Path) -> None:
    push_branch(hooked, tmp_path, "feature")
    number = hooked.open_pull(REPO, "feature")
    (delivery,) = hooked.comment(REPO, number, "@agentfarm go", by="bob")
    trigger = parse(hooked, delivery)
    assert trigger is not None
    assert (trigger.kind, trigger.number, trigger.actor, trigger.comment, trigger.is_pull) == (
        "comment",
        number,
        "bob",
        "@agentfarm go",
        True,
    )
    assert trigger.comment_id == hooked.issue_comments(REPO, number)[0].id


def test_a_comment_on_an_issue_is_not_on_a_pull(hooked: FakeForge) -> None:
    (delivery,) = hooked.comment(REPO, hooked.open_issue(REPO, "x"), "hi", by="bob")
    trigger = parse(hooked, delivery)
    assert trigger is not None and trigger.is_pull is False


def test_a_comment_edit_is_no_trigger(hooked: FakeForge) -> None:
    (delivery,) = hooked.comment(REPO, hooked.open_issue(REPO, "x"), "hi", by="bob")
    payload = {**delivery.payload, "action": "edited"}
    body = json.dumps(payload).encode()
    assert webhooks.parse_delivery(hooked.kind, delivery.headers, body, trigger_label="x") is None


def test_a_github_status_event(tmp_path: Path) -> None:
    with FakeForge(tmp_path, kind="github") as fake:
        fake.create_repo(REPO)
        fake.add_webhook(REPO, HOOK, SECRET)
        sha = push_branch(fake, tmp_path, "feature")
        (delivery,) = fake.set_status(REPO, "feature", "ci/test", "failure", by="ci-bot")
        trigger = parse(fake, delivery)
    assert trigger is not None
    assert (trigger.kind, trigger.sha, trigger.state, trigger.check, trigger.number) == (
        "status",
        sha,
        "failure",
        "ci/test",
        None,
    )


def test_a_completed_check_run() -> None:
    body = json.dumps(
        {
            "action": "completed",
            "check_run": {"head_sha": "a" * 40, "name": "build", "conclusion": "timed_out"},
            "repository": {"full_name": REPO},
            "sender": {"login": "github-actions"},
        }
    ).encode()
    headers = {"X-GitHub-Event": "check_run", "X-GitHub-Delivery": "d-1"}
    trigger = webhooks.parse_delivery("github", headers, body, trigger_label="agentfarm")
    assert trigger is not None
    assert (trigger.kind, trigger.state, trigger.check) == ("status", "failure", "build")


def test_ping_and_unknown_events_are_no_trigger() -> None:
    body = json.dumps({"zen": "hi", "repository": {"full_name": REPO}}).encode()
    for event in ("ping", "push", "release"):
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": "d"}
        assert webhooks.parse_delivery("github", headers, body, trigger_label="a") is None


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"X-GitHub-Event": "issues"}, b"{}", "delivery id"),
        ({"X-GitHub-Event": "issues", "X-GitHub-Delivery": "d" * 201}, b"{}", "too long"),
        ({"X-GitHub-Event": "issues", "X-GitHub-Delivery": "d"}, b"not json", "not JSON"),
        ({"X-GitHub-Event": "issues", "X-GitHub-Delivery": "d"}, b"[1]", "JSON object"),
        (
            {"X-GitHub-Event": "issues", "X-GitHub-Delivery": "d"},
            b'{"repository": {"full_name": "../etc"}}',
            "valid repository",
        ),
        (
            {"X-GitHub-Event": "issues", "X-GitHub-Delivery": "d"},
            json.dumps(
                {
                    "action": "labeled",
                    "label": {"name": "a"},
                    "issue": {"number": "1; drop", "id": 1},
                    "repository": {"full_name": REPO},
                }
            ).encode(),
            "issue or comment is malformed",
        ),
    ],
)
def test_unreadable_deliveries_say_why(headers: dict[str, str], body: bytes, message: str) -> None:
    with pytest.raises(webhooks.InvalidDeliveryError, match=message):
        webhooks.parse_delivery("github", headers, body, trigger_label="a")


def test_a_kept_trigger_reads_back_as_it_was() -> None:
    trigger = webhooks.Trigger(
        kind="comment",
        repo="acme/app",
        number=12,
        actor="alice",
        delivery_id="d-1",
        labels=("agentfarm", "bug"),
        is_pull=True,
        comment_id=99,
        comment="@agentfarm ünïcode\nand a second line",
    )
    assert webhooks.load_trigger(webhooks.dump_trigger(trigger)) == trigger


@pytest.mark.parametrize(
    "kept", ["[]", '{"kind": "comment"}', '{"kind": "comment", "repo": "a/b", "nope": 1}']
)
def test_what_is_not_a_kept_trigger_is_refused(kept: str) -> None:
    with pytest.raises(ValueError, match="not a kept trigger"):
        webhooks.load_trigger(kept)


def test_the_delivery_id_comes_from_the_forge_s_header() -> None:
    assert webhooks.delivery_id("github", {"X-GitHub-Delivery": "g-1"}) == "g-1"
    assert webhooks.delivery_id("forgejo", {"x-gitea-delivery": "f-1"}) == "f-1"
    assert webhooks.delivery_id("forgejo", {"X-GitHub-Delivery": "g-1"}) == ""
