"""The attempt state machine through the pipeline's public methods, on an in-memory forge, a
real store and the fake backend: permissions, Blocked-by, the per-repository lock, unlabel and
relabel, the end of a run, forge errors, and a restart at every step."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from agentfarm.domain import models
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import reconcile
from agentfarm.pipeline.forges import errors as forge_errors
from agentfarm.pipeline.service import Pipeline
from tests.unit.pipeline_helpers import REPO, Crash, World, world

__all__ = ["world"]  # the fixture

State = domain.AttemptState


async def labeled(w: World, pipe: Pipeline, number: int = 1, *, by: str = "alice") -> None:
    """The label applied on the forge and its delivery handled (as a queued look)."""
    if (REPO, number) not in w.client.issues:
        w.client.open_issue(number)
    w.client.label(number, by=by)
    pipe.enqueue(reconcile.Look(w.forge.id, REPO, number, "labeled", actor=by))
    await pipe.tick()


async def one(w: World, number: int = 1) -> domain.Attempt:
    attempts = await w.attempts(number)
    assert len(attempts) == 1
    return attempts[0]


def statuses(w: World, number: int = 1) -> list[str]:
    return w.client.comments_on(number)


async def test_a_labeled_issue_becomes_a_run_a_pull_request_and_one_edited_comment(
    world: World,
) -> None:
    pipe = await world.pipeline()
    world.client.open_issue(1, "Fix the parser", "It breaks on <!-- secret --> input.")
    await labeled(world, pipe)
    attempt = await one(world)
    assert attempt.state == State.running and attempt.branch == "agentfarm/issue-1-fix-the-parser"
    run = await world.store.get_run(attempt.run_id or "")
    assert run.spec.repo == "https://github.com/alice/proj.git"
    assert run.spec.base_branch == "main" and run.branch == attempt.branch
    assert run.spec.git_token_secret == "FORGE_TOKEN"  # the name only; git gets it via env
    assert "Standing orders." in run.spec.prompt and "Fix the parser" in run.spec.prompt
    assert "secret" not in run.spec.prompt  # hidden markup is cleaned before the prompt
    assert run.config_name == "issue-implementer"
    assert "agentfarm:in-progress" in world.client.issues[(REPO, 1)].labels
    [comment] = statuses(world)
    assert f"agentfarm:attempt:{attempt.id}" in comment

    await world.finish_run(attempt)
    await pipe.tick()
    attempt = await one(world)
    assert attempt.state == State.done and attempt.pr_number is not None
    [pull] = world.client.pulls
    assert (pull["head"], pull["base"], pull["draft"]) == (attempt.branch, "main", False)
    assert pull["title"] == "Fix the parser"
    assert pull["body"].startswith("Closes #1")
    assert f"https://farm.example/runs/{run.id}" in pull["body"]
    assert "$0.00" in pull["body"] and "1 turns" in pull["body"]
    assert world.client.count("create_comment") == 1
    [comment] = statuses(world)
    assert attempt.pr_url in comment
    labels = world.client.issues[(REPO, 1)].labels
    assert "agentfarm:done" in labels and "agentfarm:in-progress" not in labels


async def test_a_label_from_a_user_without_write_access_is_ignored_with_one_comment(
    world: World,
) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe, by="mallory")
    attempt = await one(world)
    assert attempt.state == State.ignored and "@mallory" in attempt.reason
    [comment] = statuses(world)
    assert "cannot write" in comment
    # The label is still there: later polls and deliveries change nothing.
    pipe.enqueue(reconcile.Look(world.forge.id, REPO, 1, "poll"))
    pipe.enqueue(reconcile.Look(world.forge.id, REPO, 1, "labeled", actor="mallory"))
    await pipe.tick()
    await one(world)
    assert len(statuses(world)) == 1
    assert world.store and not await world.store.list_runs()
    assert "agentfarm:in-progress" not in world.client.issues[(REPO, 1)].labels


async def test_blocked_by_waits_until_the_blocker_is_closed(world: World) -> None:
    now = [1000.0]
    pipe = await world.pipeline(clock=lambda: now[0])
    world.client.open_issue(2, "The blocker")
    world.client.open_issue(1, "Later", "Needs the other one.\n\nBlocked by #2")
    await labeled(world, pipe)
    attempt = await one(world)
    assert attempt.state == State.waiting and "#2" in attempt.reason
    assert not await world.store.list_runs()
    await pipe.tick()
    assert (await one(world)).state == State.waiting
    world.client.issues[(REPO, 2)].state = "closed"
    asked = world.client.count("get_issue")
    await pipe.tick()  # the forge is asked again only after a while
    assert (await one(world)).state == State.waiting
    assert world.client.count("get_issue") == asked
    now[0] += 31
    await pipe.tick()
    assert (await one(world)).state == State.running


async def test_one_attempt_runs_per_repository_the_next_waits_its_turn(world: World) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe, 1)
    await labeled(world, pipe, 2)
    first, second = await one(world, 1), await one(world, 2)
    assert first.state == State.running
    assert second.state == State.waiting and "Another attempt" in second.reason
    assert len(await world.store.list_runs()) == 1
    await world.finish_run(first)
    await pipe.tick()
    assert (await one(world, 1)).state == State.done
    await pipe.tick()
    assert (await one(world, 2)).state == State.running


async def test_removing_the_label_stops_the_run(world: World) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe)
    attempt = await one(world)
    world.client.unlabel(1)
    pipe.enqueue(reconcile.Look(world.forge.id, REPO, 1, "unlabeled", actor="alice"))
    await pipe.tick()
    attempt = await one(world)
    assert attempt.state == State.stopped and "unlabeled" in attempt.reason
    run = await world.run_ended(attempt.run_id or "")
    assert run.status == models.RunStatus.stopped
    assert "unlabeled" in statuses(world)[0]


async def test_labeling_again_after_the_end_makes_a_new_attempt_on_a_new_branch(
    world: World,
) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe)
    first = await one(world)
    await world.finish_run(first)
    await pipe.tick()
    # Seen again still labeled (a poll): nothing new was asked.
    pipe.enqueue(reconcile.Look(world.forge.id, REPO, 1, "poll"))
    await pipe.tick()
    assert len(await world.attempts(1)) == 1
    world.client.unlabel(1)
    pipe.enqueue(reconcile.Look(world.forge.id, REPO, 1, "unlabeled"))
    await pipe.tick()
    await labeled(world, pipe)
    old, new = await world.attempts(1)
    assert old.state == State.done and new.seq == 2 and new.state == State.running
    assert new.branch == old.branch + "-2"
    assert len(statuses(world)) == 2  # one status comment per attempt


async def test_a_branch_already_on_the_forge_is_not_reused(world: World) -> None:
    pipe = await world.pipeline()
    world.client.branches.add("agentfarm/issue-1-fix-the-bug")
    await labeled(world, pipe)
    assert (await one(world)).branch == "agentfarm/issue-1-fix-the-bug-2"


async def test_a_deleted_status_comment_is_posted_again(world: World) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe)
    world.client.comments.clear()  # a person deleted it
    await world.finish_run(await one(world))
    await pipe.tick()
    attempt = await one(world)
    assert attempt.state == State.done and len(statuses(world)) == 1
    assert attempt.comment_id in world.client.comments


async def test_a_run_without_commits_fails_with_the_agents_explanation(world: World) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe)
    await world.finish_run(await one(world), commits=0, pushed=False)
    await pipe.tick()
    attempt = await one(world)
    assert attempt.state == State.failed and "made no commits" in attempt.reason
    assert "done" in attempt.reason  # the fake agent's closing words
    assert not world.client.pulls
    assert "agentfarm:failed" in world.client.issues[(REPO, 1)].labels
    assert "made no commits" in statuses(world)[0]


async def test_a_rejected_push_fails_with_gits_reason_and_what_to_do(world: World) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe)
    await world.finish_run(await one(world), pushed=False, error="protected branch hook declined")
    await pipe.tick()
    attempt = await one(world)
    assert attempt.state == State.failed
    assert "protected branch hook declined" in attempt.reason and "retry" in attempt.reason
    assert not world.client.pulls


async def test_a_temporary_forge_error_is_retried_later_and_recovers(world: World) -> None:
    now = [1000.0]
    pipe = await world.pipeline(clock=lambda: now[0])
    failure = forge_errors.TemporaryForgeError("POST comments answered 502", delay=30.0)
    world.client.failures.append(("create_comment", failure))
    await labeled(world, pipe)
    attempt = await one(world)
    assert attempt.active and attempt.run_id is None and not statuses(world)
    await pipe.tick()  # too early: left alone
    assert world.client.count("create_comment") == 1
    now[0] += 31
    await pipe.tick()
    attempt = await one(world)
    assert attempt.state == State.running and len(statuses(world)) == 1


async def test_a_permanent_forge_error_fails_the_attempt_with_the_forges_words(
    world: World,
) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe)
    await world.finish_run(await one(world))
    refused = forge_errors.PermanentForgeError(
        "POST /repos/alice/proj/pulls answered 422: Validation Failed; fix the input"
    )
    world.client.failures.append(("open_pull", refused))
    await pipe.tick()
    attempt = await one(world)
    assert attempt.state == State.failed and "Validation Failed" in attempt.reason
    assert "Validation Failed" in statuses(world)[0]
    assert "agentfarm:failed" in world.client.issues[(REPO, 1)].labels


CrashPoint = Callable[[World, Pipeline], Any]


def crash_in_submit(w: World, pipe: Pipeline) -> None:
    real = pipe.supervisor.submit

    async def submit(*args: Any, **kwargs: Any) -> models.Run:
        await real(*args, **kwargs)
        raise Crash("died right after submitting the run")

    pipe.reconciler.supervisor = SimpleNamespace(submit=submit)  # type: ignore[assignment]


@pytest.mark.parametrize(
    "point", ["create_comment", "add_labels", "submit", "open_pull", "edit_comment"]
)
async def test_a_restart_at_any_step_resumes_without_doing_anything_twice(
    world: World, point: str
) -> None:
    pipe = await world.pipeline()
    world.client.open_issue(1)
    world.client.label(1)
    if point == "submit":
        crash_in_submit(world, pipe)
    elif point != "edit_comment":
        world.client.crash_after.add(point)
    pipe.enqueue(reconcile.Look(world.forge.id, REPO, 1, "labeled", actor="alice"))
    for _ in range(3):
        try:
            await pipe.tick()
        except Crash:
            pipe = await world.pipeline()  # a new server over the same store and agents
            continue
        attempt = await one(world)
        if attempt.state == State.running:
            await world.finish_run(attempt)
            if point == "edit_comment":
                world.client.crash_after.add(point)
    for _ in range(3):
        try:
            await pipe.tick()
        except Crash:
            pipe = await world.pipeline()
    attempt = await one(world)
    assert attempt.state == State.done
    assert len(await world.store.list_runs()) == 1
    assert len(world.client.pulls) == 1
    assert world.client.count("create_comment") == 1
    assert len(statuses(world)) == 1


async def test_a_missing_config_holds_the_attempt_and_says_why(world: World) -> None:
    now = [1000.0]
    pipe = await world.pipeline(clock=lambda: now[0])
    await world.store.delete_config("issue-implementer")
    await labeled(world, pipe)
    attempt = await one(world)
    assert attempt.active and attempt.run_id is None
    assert "issue-implementer" in attempt.reason and "does not exist" in attempt.reason
    await world.store.create_config(
        models.AgentConfig(name="issue-implementer", repo="unused", prompt="Standing orders.")
    )
    now[0] += 3600
    await pipe.tick()
    assert (await one(world)).state == State.running


async def test_a_repository_taken_off_the_allow_list_is_left_alone(world: World) -> None:
    now = [1000.0]
    pipe = await world.pipeline(clock=lambda: now[0])
    await world.store.delete_config("issue-implementer")  # hold it before it runs
    await labeled(world, pipe)
    await world.pstore.update_forge(world.forge.model_copy(update={"repos": ["alice/else"]}))
    now[0] += 3600
    calls = len(world.client.calls)
    await pipe.tick()
    attempt = await one(world)
    assert attempt.state == State.ignored and "allow-list" in attempt.reason
    assert len(world.client.calls) == calls


async def test_a_failed_run_with_pushed_commits_fails_naming_the_branch(world: World) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe)
    run = await world.finish_run(await one(world), commits=2, exit_code=3)
    assert run.status == models.RunStatus.failed
    await pipe.tick()
    attempt = await one(world)
    assert attempt.state == State.failed
    assert f"pushed on branch `{attempt.branch}`" in attempt.reason
    assert "no work is lost" in attempt.reason and not world.client.pulls


@pytest.mark.parametrize("crash", [False, True])
async def test_a_follow_up_continues_the_branch_and_ends_on_the_same_pull_request(
    world: World, crash: bool
) -> None:
    pipe = await world.pipeline()
    await labeled(world, pipe)
    first = await one(world)
    await world.finish_run(first)
    await pipe.tick()
    first = await one(world)
    # As followups.py records one for a review comment mentioning @agentfarm.
    review = domain.Attempt(
        forge_id=world.forge.id,
        repo=REPO,
        number=1,
        kind=domain.AttemptKind.review,
        seq=2,
        actor="alice",
        title=first.title,
        request="@agentfarm please rename the helper",
        branch=first.branch,
        base_branch=first.branch,
        clone_url=first.clone_url,
        pr_number=first.pr_number,
        pr_url=first.pr_url,
        parent_id=first.id,
    )
    await world.pstore.create_attempt(review)
    if crash:  # dies right after submitting: the new server adopts this run, not the first
        crash_in_submit(world, pipe)
        with pytest.raises(Crash):
            await pipe.tick()
        pipe = await world.pipeline()
    await pipe.tick()
    review = await world.pstore.get_attempt(review.id)
    assert len(await world.store.list_runs()) == 2
    assert review.state == State.running
    run = await world.store.get_run(review.run_id or "")
    assert run.spec.base_branch == first.branch
    assert "rename the helper" in run.spec.prompt
    await world.finish_run(review)
    await pipe.tick()
    review = await world.pstore.get_attempt(review.id)
    assert review.state == State.done and review.pr_number == first.pr_number
    assert world.client.count("open_pull") == 1 and len(world.client.pulls) == 1
    assert world.client.count("may_write") == 1  # followups.py checked the reviewer


async def test_a_pipeline_run_is_queued_as_such_and_its_pull_request_is_announced(
    world: World,
) -> None:
    pipe = await world.pipeline()
    sent: list[Any] = []

    async def record(note: Any) -> None:
        sent.append(note)

    pipe.supervisor.notifier.notify = record  # type: ignore[method-assign]
    world.client.open_issue(1, "Fix the parser", "Please.")
    await labeled(world, pipe)
    attempt = await one(world)
    run = await world.store.get_run(attempt.run_id or "")
    assert run.origin == "pipeline"  # the per-repository cap for pipeline runs applies
    await world.finish_run(attempt)
    await pipe.tick()
    attempt = await one(world)
    [note] = [n for n in sent if n.kind == "pull_request_opened"]
    assert note.url == attempt.pr_url and note.run_id == run.id
    await pipe.tick()  # nothing new: the announcement is made once
    assert len([n for n in sent if n.kind == "pull_request_opened"]) == 1
