"""The pipeline service's public surface: webhook deliveries (signatures, deduplication,
replays, the allow-list), the kill switch, retry and stop, polling, and the HTTP endpoint."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentfarm.domain import errors
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline.forges import types, webhooks
from agentfarm.pipeline.service import Pipeline
from agentfarm.store.pipeline import PipelineStore
from agentfarm.store.secrets import SecretStore
from tests.unit.conftest import AppFactory
from tests.unit.pipeline_helpers import HEAD_SHA, REPO, SECRET, World, home_forge, until, world

__all__ = ["world"]  # the fixture

State = domain.AttemptState


def delivery(
    action: str = "labeled",
    number: int = 1,
    *,
    sender: str = "alice",
    delivery_id: str | None = None,
    repo: str = REPO,
    secret: str | None = SECRET,
) -> tuple[dict[str, str], bytes]:
    """A GitHub `issues` delivery as the forge signs it (``secret=None``: unsigned)."""
    labels = [{"name": "agentfarm"}] if action == "labeled" else []
    payload = {
        "action": action,
        "label": {"name": "agentfarm"},
        "issue": {"number": number, "title": "t", "body": "", "labels": labels},
        "repository": {"full_name": repo},
        "sender": {"login": sender},
    }
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "Content-Type": "application/json",
    }
    if secret is not None:
        headers["X-Hub-Signature-256"] = webhooks.sign("github", secret, body)
    return headers, body


async def deliver(pipe: Pipeline, action: str = "labeled", **kw: Any) -> str:
    headers, body = delivery(action, **kw)
    return await pipe.handle_delivery("home", headers, body)


@pytest.mark.parametrize("secret", [None, "not-the-secret"])
async def test_a_missing_or_wrong_signature_is_refused_and_dispatches_nothing(
    world: World, secret: str | None
) -> None:
    pipe = await world.pipeline()
    world.client.open_issue(1)
    world.client.label(1)
    with pytest.raises(errors.UnauthorizedError, match="signature is missing or wrong"):
        await deliver(pipe, secret=secret)
    await pipe.tick()
    assert await world.attempts() == [] and world.client.calls == []
    # Not even remembered: the genuine delivery with that id still counts.
    headers, body = delivery(delivery_id="d-1", secret=secret)
    with pytest.raises(errors.UnauthorizedError):
        await pipe.handle_delivery("home", headers, body)
    assert await deliver(pipe, delivery_id="d-1") == "accepted"


async def test_an_unknown_forge_and_an_unreadable_delivery_are_errors(world: World) -> None:
    pipe = await world.pipeline()
    headers, body = delivery()
    with pytest.raises(errors.NotFoundError):
        await pipe.handle_delivery("nowhere", headers, body)
    bad = b"not json"
    headers["X-Hub-Signature-256"] = webhooks.sign("github", SECRET, bad)
    with pytest.raises(webhooks.InvalidDeliveryError):
        await pipe.handle_delivery("home", headers, bad)


async def test_a_replayed_delivery_is_a_duplicate_and_starts_nothing_more(world: World) -> None:
    pipe = await world.pipeline()
    world.client.open_issue(1)
    world.client.label(1)
    assert await deliver(pipe, delivery_id="d-1") == "accepted"
    assert await deliver(pipe, delivery_id="d-1") == "duplicate"
    await pipe.tick()
    assert await deliver(pipe, delivery_id="d-1") == "duplicate"
    await pipe.tick()
    [attempt] = await world.attempts()
    assert attempt.state == State.running and attempt.delivery_id == "d-1"
    assert len(await world.store.list_runs()) == 1


async def test_reordered_and_redelivered_label_events_start_one_run(world: World) -> None:
    pipe = await world.pipeline()
    world.client.open_issue(1)
    world.client.label(1)
    # A stale unlabel (from before the label) arrives after the label's delivery, and the
    # forge redelivers the label under a new id: the issue is labeled, one run works on it.
    assert await deliver(pipe, "labeled") == "accepted"
    await pipe.tick()
    assert await deliver(pipe, "unlabeled") == "accepted"
    assert await deliver(pipe, "labeled") == "accepted"
    await pipe.tick()
    await pipe.tick()
    [attempt] = await world.attempts()
    assert attempt.state == State.running
    assert len(await world.store.list_runs()) == 1
    assert world.client.count("create_comment") == 1


async def test_repositories_outside_the_allow_list_are_ignored(world: World) -> None:
    pipe = await world.pipeline()
    world.client.open_issue(1, repo="eve/other")
    assert await deliver(pipe, repo="eve/other") == "ignored"
    await pipe.tick()
    assert await world.attempts() == [] and world.client.calls == []


async def test_other_events_are_ignored(world: World) -> None:
    pipe = await world.pipeline()
    body = json.dumps({"zen": "hi", "hook_id": 1}).encode()
    headers = {
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "ping-1",
        "X-Hub-Signature-256": webhooks.sign("github", SECRET, body),
    }
    assert await pipe.handle_delivery("home", headers, body) == "ignored"


async def test_the_kill_switch_holds_new_attempts_until_resumed(world: World) -> None:
    pipe = await world.pipeline()
    await pipe.set_paused(True)
    assert await pipe.paused()
    world.client.open_issue(1)
    world.client.label(1)
    await deliver(pipe)
    await pipe.tick()
    [attempt] = await world.attempts()
    assert attempt.state == State.waiting and "paused" in attempt.reason
    assert not await world.store.list_runs() and world.client.count("create_comment") == 0
    # The flag is stored: a restarted server is still paused.
    pipe = await world.pipeline()
    assert await pipe.paused()
    await pipe.set_paused(False)
    await pipe.tick()
    [attempt] = await world.attempts()
    assert attempt.state == State.running


async def test_retry_makes_a_new_attempt_on_a_new_branch(world: World) -> None:
    pipe = await world.pipeline()
    world.client.open_issue(1)
    world.client.label(1)
    await deliver(pipe)
    await pipe.tick()
    [first] = await world.attempts()
    with pytest.raises(errors.ConflictError, match="stop it first"):
        await pipe.retry(first.id)
    await world.finish_run(first, commits=0, pushed=False)
    await pipe.tick()
    retried = await pipe.retry(first.id)
    assert retried.seq == 2
    await pipe.tick()
    old, new = await world.attempts()
    assert old.state == State.failed and new.state == State.running
    assert new.branch == old.branch + "-2" and new.run_id != old.run_id


async def test_stop_attempt_stops_its_run_and_says_so(world: World) -> None:
    pipe = await world.pipeline()
    world.client.open_issue(1)
    world.client.label(1)
    await deliver(pipe)
    await pipe.tick()
    [attempt] = await world.attempts()
    await pipe.stop_attempt(attempt.id)
    await pipe.tick()
    [attempt] = await world.attempts()
    assert attempt.state == State.stopped
    run = await world.run_ended(attempt.run_id or "")
    assert run.status.value == "stopped"
    assert "cockpit" in world.client.comments_on(1)[0]
    with pytest.raises(errors.ConflictError, match="already ended"):
        await pipe.stop_attempt(attempt.id)


async def test_a_poll_finds_labeled_issues_and_notices_a_removed_label(world: World) -> None:
    pstore = world.pstore
    forge = await pstore.update_forge(world.forge.model_copy(update={"poll_seconds": 60}))
    pipe = await world.pipeline()
    world.client.open_issue(1)
    world.client.label(1)
    await pipe.poller.poll(forge)
    await pipe.tick()
    [attempt] = await world.attempts()
    assert attempt.state == State.running and attempt.actor == "alice"
    world.client.unlabel(1)
    await pipe.poller.poll(forge)
    await pipe.tick()
    [attempt] = await world.attempts()
    assert attempt.state == State.stopped


async def test_the_webhook_endpoint(app_client: AppFactory, tmp_path: Path) -> None:
    async with app_client() as client:
        app: Any = client._transport.app  # type: ignore[attr-defined]
        pstore: PipelineStore = app.state.pipeline_store
        secrets: SecretStore = app.state.secrets
        secrets.set(domain.webhook_secret_name("home"), SECRET)
        await pstore.create_forge(home_forge())
        anonymous = {"Authorization": ""}
        headers, body = delivery(repo="eve/other")
        url = "/api/forges/home/webhook"
        answer = await client.post(url, content=body, headers=headers | anonymous)
        assert (answer.status_code, answer.json()) == (202, {"status": "ignored"})
        headers, body = delivery(secret="wrong")
        answer = await client.post(url, content=body, headers=headers | anonymous)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "unauthorized"
        bad = b"[1"
        headers["X-Hub-Signature-256"] = webhooks.sign("github", SECRET, bad)
        answer = await client.post(url, content=bad, headers=headers | anonymous)
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_delivery")
        answer = await client.post("/api/forges/nowhere/webhook", content=body, headers=headers)
        assert answer.status_code == 404
        schema = (await client.get("/openapi.json")).json()
        documented = schema["paths"]["/api/forges/{name}/webhook"]["post"]["responses"]
        assert {"202", "400", "401", "404"} <= set(documented)


async def test_a_forgejo_label_update_asks_the_timeline_who_applied_the_label(
    world: World,
) -> None:
    secrets = SecretStore(world.settings().secrets_path)
    secrets.set(domain.webhook_secret_name("fj"), SECRET)
    forge = await world.pstore.create_forge(
        domain.Forge(
            name="fj",
            kind="forgejo",
            base_url="https://code.example/api/v1",
            token_secret="FORGE_TOKEN",
            repos=[REPO],
            webhook_secret_name=domain.webhook_secret_name("fj"),
        )
    )
    pipe = await world.pipeline()
    world.client.open_issue(1)
    world.client.label(1, by="alice")
    payload = {
        "action": "label_updated",
        "issue": {"number": 1, "title": "t", "body": "", "labels": [{"name": "agentfarm"}]},
        "repository": {"full_name": REPO},
        "sender": {"login": "bob"},  # changed another label afterwards
    }
    body = json.dumps(payload).encode()
    headers = {
        "X-Forgejo-Event": "issues",
        "X-Forgejo-Delivery": "fj-1",
        "X-Forgejo-Signature": webhooks.sign("forgejo", SECRET, body),
    }
    assert await pipe.handle_delivery("fj", headers, body) == "accepted"
    await pipe.tick()
    [attempt] = await world.pstore.list_attempts(forge_id=forge.id)
    assert attempt.actor == "alice" and attempt.state == State.running
    assert attempt.clone_url == "https://code.example/alice/proj.git"


async def test_the_started_service_runs_on_its_own_and_resumes_after_a_restart(
    world: World,
) -> None:
    pipe = await world.pipeline()
    await pipe.start()
    world.client.open_issue(1)
    world.client.label(1)
    assert await deliver(pipe) == "accepted"

    async def state_is(state: State) -> bool:
        attempts = await world.attempts()
        return bool(attempts) and attempts[-1].state == state

    await until(lambda: state_is(State.running))
    [attempt] = await world.attempts()
    await world.finish_run(attempt)  # the run's end wakes the loop
    await until(lambda: state_is(State.done))
    # Labeled again while the server is down: a restart catches up, then stops it when the
    # label is gone by the next start (no delivery reached anyone either time).
    await world.close()
    world.client.unlabel(1)
    pipe = await world.pipeline()
    await pipe.start()
    await until(lambda: _tracked_without_label(world))
    await world.close()
    world.client.label(1)
    pipe = await world.pipeline()
    await pipe.start()
    await until(lambda: state_is(State.running))
    await world.close()
    world.client.unlabel(1)
    pipe = await world.pipeline()
    await pipe.start()
    await until(lambda: state_is(State.stopped))
    assert len(await world.attempts()) == 2


async def _tracked_without_label(world: World) -> bool:
    tracked = await world.pstore.get_tracked_issue(world.forge.id, REPO, 1)
    return tracked is not None and "agentfarm" not in tracked.labels


def comment_delivery(
    pr_number: int, body: str, *, by: str = "alice"
) -> tuple[dict[str, str], bytes]:
    payload = {
        "action": "created",
        "issue": {
            "number": pr_number,
            "title": "t",
            "body": "",
            "labels": [],
            "pull_request": {"url": "x"},
        },
        "comment": {"id": 555, "body": body, "user": {"login": by}},
        "repository": {"full_name": REPO},
        "sender": {"login": by},
    }
    body_bytes = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": "issue_comment",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": webhooks.sign("github", SECRET, body_bytes),
    }
    return headers, body_bytes


def status_delivery(sha: str, state: str = "failure") -> tuple[dict[str, str], bytes]:
    payload = {"sha": sha, "state": state, "context": "ci/test", "repository": {"full_name": REPO}}
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": "status",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": webhooks.sign("github", SECRET, body),
    }
    return headers, body


async def done_with_pull(world: World, pipe: Pipeline) -> domain.Attempt:
    world.client.open_issue(1)
    world.client.label(1)
    await deliver(pipe)
    await pipe.tick()
    [attempt] = await world.attempts()
    await world.finish_run(attempt)
    await pipe.tick()
    [attempt] = await world.attempts()
    assert attempt.state == State.done and attempt.pr_number is not None
    return attempt


async def test_a_review_comment_mentioning_the_bot_runs_a_follow_up(world: World) -> None:
    pipe = await world.pipeline()
    first = await done_with_pull(world, pipe)
    assert first.pr_number is not None
    headers, body = comment_delivery(first.pr_number, "@agentfarm please add a test")
    assert await pipe.handle_delivery("home", headers, body) == "accepted"
    await pipe.tick()
    _, review = await world.attempts()
    assert review.kind == domain.AttemptKind.review and review.state == State.running
    run = await world.store.get_run(review.run_id or "")
    assert run.branch == first.branch and run.spec.base_branch == first.branch
    assert "please add a test" in run.spec.prompt
    await world.finish_run(review)
    await pipe.tick()
    _, review = await world.attempts()
    assert review.state == State.done and review.pr_number == first.pr_number
    assert len(world.client.pulls) == 1


async def test_a_review_request_answered_just_before_a_kill_runs_after_the_restart(
    world: World,
) -> None:
    # The forge had its answer, so it never sends the comment again: the request is kept
    # with the delivery and decided at the next start, once.
    pipe = await world.pipeline()
    first = await done_with_pull(world, pipe)
    assert first.pr_number is not None
    headers, body = comment_delivery(first.pr_number, "@agentfarm please add a test")
    assert await pipe.handle_delivery("home", headers, body) == "accepted"
    [(forge_id, kept)] = await world.pstore.pending_followups()
    assert forge_id == world.forge.id and "please add a test" in kept
    await world.close()  # killed: no pass of the loop decided it
    pipe = await world.pipeline()
    await pipe.start()

    async def reviewing() -> bool:
        kinds = [(a.kind, a.state) for a in await world.attempts()]
        return kinds[-1:] == [(domain.AttemptKind.review, State.running)]

    await until(reviewing)
    assert await world.pstore.pending_followups() == []
    await world.close()
    pipe = await world.pipeline()
    await pipe.start()
    await pipe.tick()
    assert len(await world.attempts()) == 2
    assert await pipe.handle_delivery("home", headers, body) == "duplicate"


async def test_a_comment_that_asks_nothing_keeps_nothing(world: World) -> None:
    # Only a mention in the prose of a comment on a pull request is a request to keep.
    pipe = await world.pipeline()
    first = await done_with_pull(world, pipe)
    assert first.pr_number is not None
    headers, body = comment_delivery(first.pr_number, "looks good to me")
    assert await pipe.handle_delivery("home", headers, body) == "accepted"
    assert await world.pstore.pending_followups() == []
    await pipe.tick()
    assert len(await world.attempts()) == 1


async def test_a_failing_status_runs_one_checks_follow_up(world: World) -> None:
    pipe = await world.pipeline()
    first = await done_with_pull(world, pipe)
    failing = types.Check(
        name="ci/test", state="failure", url="https://ci.example/1", description="2 tests failed"
    )
    world.client.statuses[HEAD_SHA] = types.CombinedStatus(HEAD_SHA, "failure", (failing,))
    for _ in range(2):  # a re-delivered status changes nothing
        headers, body = status_delivery(HEAD_SHA)
        assert await pipe.handle_delivery("home", headers, body) == "accepted"
        await pipe.tick()
    attempts = await world.attempts()
    assert [a.kind for a in attempts] == [domain.AttemptKind.issue, domain.AttemptKind.checks]
    checks = attempts[-1]
    assert checks.state == State.running and checks.branch == first.branch
    run = await world.store.get_run(checks.run_id or "")
    assert "2 tests failed" in run.spec.prompt


async def test_the_default_client_uses_the_stored_token_and_follows_its_rotation(
    world: World,
) -> None:
    made = await world.pipeline()
    pipe = Pipeline(world.settings(), world.store, world.pstore, made.secrets, made.supervisor)
    try:
        first = await pipe.client(world.forge)
        assert await pipe.client(world.forge) is first
        assert "forge-token-123" not in repr(first)
        made.secrets.set("FORGE_TOKEN", "rotated-token-456")
        assert await pipe.client(world.forge) is not first
        made.secrets.delete("FORGE_TOKEN")
        with pytest.raises(errors.ConfigurationError, match="agentfarm secret set"):
            await pipe.client(world.forge)
    finally:
        await pipe.close()


async def test_a_retry_by_relabeling_answered_just_before_a_kill_runs_after_the_restart(
    world: World,
) -> None:
    # A person retries a done issue by removing the label and applying it again; both
    # deliveries are answered, then the server is killed before its loop looked. The forge
    # never sends them again, and the catch-up poll alone sees an issue labeled all along:
    # the looks kept with the deliveries are made at the next start, once.
    pipe = await world.pipeline()
    world.client.open_issue(1)
    world.client.label(1)
    await deliver(pipe)
    await pipe.tick()
    [first] = await world.attempts()
    await world.finish_run(first)
    await pipe.tick()
    assert [a.state for a in await world.attempts()] == [State.done]
    world.client.unlabel(1)
    assert await deliver(pipe, "unlabeled", delivery_id="d-off") == "accepted"
    world.client.label(1)
    assert await deliver(pipe, "labeled", delivery_id="d-on") == "accepted"
    pending = await world.pstore.pending_looks()
    assert [(look.source, look.delivery_id) for _, look in pending] == [
        ("unlabeled", "d-off"),
        ("labeled", "d-on"),
    ]
    await world.close()  # killed: no pass of the loop made those looks
    pipe = await world.pipeline()
    await pipe.start()

    async def retried() -> bool:
        return [a.state for a in await world.attempts()] == [State.done, State.running]

    await until(retried)
    assert await world.pstore.pending_looks() == []
    await world.close()
    pipe = await world.pipeline()
    await pipe.start()
    await pipe.tick()
    assert len(await world.attempts()) == 2 and len(await world.store.list_runs()) == 2
    assert await deliver(pipe, delivery_id="d-on") == "duplicate"
