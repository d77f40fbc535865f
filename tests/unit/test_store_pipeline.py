"""The pipeline's store on a real SQLite file: forges, deliveries, tracked issues, attempts
(one active per issue), flags and dispatches."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agentfarm.domain import errors, models
from agentfarm.domain import pipeline as domain
from agentfarm.store import Store
from agentfarm.store.mapping import dump_time
from agentfarm.store.pipeline import DELIVERY_RETENTION, PipelineStore

S = domain.AttemptState


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "agentfarm.db")
    yield store
    await store.close()


@pytest.fixture
def ps(store: Store) -> PipelineStore:
    return PipelineStore(store.database)


def forge(name: str = "gh", **extra: object) -> domain.Forge:
    values: dict[str, object] = {
        "name": name,
        "kind": "github",
        "base_url": "https://api.github.com",
        "token_secret": "GH_TOKEN",
        "repos": ["octo/app"],
        "webhook_secret_name": domain.webhook_secret_name(name),
    }
    values.update(extra)
    return domain.Forge.model_validate(values)


def attempt(number: int = 1, **extra: object) -> domain.Attempt:
    values: dict[str, object] = {"forge_id": "f1", "repo": "octo/app", "number": number}
    values.update(extra)
    return domain.Attempt.model_validate(values)


def at(minutes: int) -> dict[str, object]:
    """A ``created_at`` some minutes into a fixed day, to order attempts without waiting."""
    base = models.utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    return {"created_at": base + timedelta(minutes=minutes)}


# --- forges ------------------------------------------------------------------------------


async def test_a_forge_round_trips_with_every_field(ps: PipelineStore) -> None:
    full = forge(
        "forgejo-home",
        kind="forgejo",
        base_url="https://git.example.org/api/v1",
        token_secret="FORGEJO_TOKEN",
        label="robot",
        repos=["me/one", "me/two"],
        config="implementer",
        poll_seconds=30,
        stop_on_unlabel=False,
        closes_issue=False,
        draft=True,
        mention="@robot",
        state_labels=domain.StateLabels(in_progress="wip", done="ok", failed="ko"),
        check_fix_attempts=5,
        check_fix_window_minutes=120,
    )
    assert await ps.create_forge(full) == full
    assert await ps.get_forge(full.id) == full
    assert await ps.get_forge("forgejo-home") == full


async def test_forges_by_id_or_name_listed_by_name_and_errors(ps: PipelineStore) -> None:
    b, a = await ps.create_forge(forge("b")), await ps.create_forge(forge("a"))
    assert [f.name for f in await ps.list_forges()] == ["a", "b"]
    # A name that is another forge's id: the id wins.
    tricky = await ps.create_forge(forge(a.id))
    assert (await ps.get_forge(a.id)).name == "a"
    assert (await ps.get_forge(tricky.id)).name == a.id

    with pytest.raises(errors.ConflictError, match="a forge named 'b' already exists"):
        await ps.create_forge(forge("b"))
    with pytest.raises(errors.ConflictError, match=f"a forge with id {b.id} already exists"):
        await ps.create_forge(forge("c", id=b.id))
    with pytest.raises(errors.NotFoundError, match="no forge with id or name 'nope'"):
        await ps.get_forge("nope")
    with pytest.raises(errors.NotFoundError, match="no forge"):
        await ps.delete_forge("nope")

    await ps.delete_forge("b")
    with pytest.raises(errors.NotFoundError):
        await ps.get_forge(b.id)
    assert {f.name for f in await ps.list_forges()} == {"a", a.id}


async def test_update_forge_keeps_created_at_and_checks_name_and_id(ps: PipelineStore) -> None:
    old = models.utcnow() - timedelta(days=2)
    one = await ps.create_forge(forge("one", created_at=old, updated_at=old))
    await ps.create_forge(forge("two"))
    changed = one.model_copy(update={"name": "uno", "draft": True, "created_at": models.utcnow()})
    saved = await ps.update_forge(changed)
    assert saved.created_at == old and saved.updated_at > old
    assert await ps.get_forge("uno") == saved
    with pytest.raises(errors.NotFoundError):
        await ps.get_forge("one")
    with pytest.raises(errors.ConflictError, match="a forge named 'two' already exists"):
        await ps.update_forge(saved.model_copy(update={"name": "two"}))
    with pytest.raises(errors.NotFoundError, match="no forge with id or name 'missing'"):
        await ps.update_forge(forge("three", id="missing"))


async def test_deleting_a_forge_deletes_what_was_recorded_of_it(ps: PipelineStore) -> None:
    gone, kept = await ps.create_forge(forge("gone")), await ps.create_forge(forge("kept"))
    for f in (gone, kept):
        assert await ps.record_delivery(f.id, "d1")
        await ps.track_issue(domain.TrackedIssue(forge_id=f.id, repo="octo/app", number=1))
        await ps.create_attempt(attempt(forge_id=f.id))
    await ps.delete_forge(gone.name)
    assert await ps.list_attempts(forge_id=gone.id) == []
    assert await ps.list_tracked_issues(gone.id) == []
    assert await ps.record_delivery(gone.id, "d1")  # forgotten
    assert len(await ps.list_attempts(forge_id=kept.id)) == 1
    assert len(await ps.list_tracked_issues(kept.id)) == 1
    assert not await ps.record_delivery(kept.id, "d1")


# --- deliveries --------------------------------------------------------------------------


async def test_deliveries_are_deduplicated_per_forge(ps: PipelineStore) -> None:
    assert await ps.record_delivery("f1", "abc")
    assert not await ps.record_delivery("f1", "abc")
    assert await ps.record_delivery("f2", "abc")
    # Racing copies of one delivery: exactly one is new.
    seen = await asyncio.gather(*(ps.record_delivery("f1", "race") for _ in range(8)))
    assert sorted(seen) == [False] * 7 + [True]
    for bad in ("", "x" * 201):
        with pytest.raises(errors.InvalidInputError, match="a delivery id has 1 to 200"):
            await ps.record_delivery("f1", bad)


async def test_deliveries_older_than_the_retention_are_forgotten(
    store: Store, ps: PipelineStore
) -> None:
    now = models.utcnow()
    old, recent = now - DELIVERY_RETENTION - timedelta(hours=1), now - timedelta(days=29)

    def insert(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO forge_deliveries (forge_id, delivery_id, received_at) VALUES (?, ?, ?)",
            [("f1", "old", dump_time(old)), ("f1", "recent", dump_time(recent))],
        )

    await store.database.write(insert)
    assert not await ps.record_delivery("f1", "old")  # a replay does not prune
    assert await ps.record_delivery("f1", "new")  # a new one prunes the old
    assert await ps.record_delivery("f1", "old")
    assert not await ps.record_delivery("f1", "recent")


# --- tracked issues ----------------------------------------------------------------------


async def test_track_issue_upserts_and_returns_the_previous_record(ps: PipelineStore) -> None:
    first = domain.TrackedIssue(
        forge_id="f1", repo="octo/app", number=7, title="Bug", labels=["agentfarm"]
    )
    assert await ps.track_issue(first) is None
    second = first.model_copy(update={"state": "closed", "labels": [], "seen_at": models.utcnow()})
    assert await ps.track_issue(second) == first
    assert await ps.get_tracked_issue("f1", "octo/app", 7) == second
    assert await ps.get_tracked_issue("f1", "octo/app", 8) is None
    assert await ps.get_tracked_issue("f2", "octo/app", 7) is None


async def test_tracked_issues_are_listed_most_recently_seen_first(ps: PipelineStore) -> None:
    now = models.utcnow()
    for number, forge_id in ((1, "f1"), (2, "f2"), (3, "f1")):
        seen = now + timedelta(minutes=number)
        await ps.track_issue(
            domain.TrackedIssue(forge_id=forge_id, repo="o/r", number=number, seen_at=seen)
        )
    assert [i.number for i in await ps.list_tracked_issues()] == [3, 2, 1]
    assert [i.number for i in await ps.list_tracked_issues("f1")] == [3, 1]
    assert [i.number for i in await ps.list_tracked_issues(limit=1)] == [3]
    with pytest.raises(errors.InvalidInputError, match="limit must be 0 or more"):
        await ps.list_tracked_issues(limit=-1)


# --- attempts ----------------------------------------------------------------------------


async def test_an_attempt_round_trips_with_every_field(ps: PipelineStore) -> None:
    full = domain.Attempt(
        forge_id="f1",
        repo="octo/app",
        number=42,
        kind=domain.AttemptKind.review,
        seq=3,
        state=S.opening_pr,
        reason="waiting for nothing",
        actor="ada",
        delivery_id="d-1",
        title="Fix it",
        body="Body\nwith lines ✓",
        request="please rename",
        branch="agentfarm/issue-42-fix-it",
        base_branch="main",
        clone_url="https://github.com/octo/app.git",
        base_sha="a" * 40,
        head_sha="b" * 40,
        run_id="run1",
        comment_id=99,
        pr_number=5,
        pr_url="https://github.com/octo/app/pull/5",
        steps={"queued": "2026-01-01T00:00:00+00:00", "running": "2026-01-01T00:01:00+00:00"},
        parent_id="parent1",
    )
    assert await ps.create_attempt(full) == full
    assert await ps.get_attempt(full.id) == full
    with pytest.raises(errors.NotFoundError, match="no attempt with id 'nope'"):
        await ps.get_attempt("nope")
    with pytest.raises(errors.ConflictError, match=f"an attempt with id {full.id} already"):
        await ps.create_attempt(full.model_copy(update={"state": S.done}))


async def test_an_issue_has_at_most_one_active_attempt(ps: PipelineStore) -> None:
    first = await ps.create_attempt(attempt(7))
    with pytest.raises(errors.ConflictError, match=rf"octo/app#7 .*active attempt \({first.id}\)"):
        await ps.create_attempt(attempt(7, state=S.running))
    # Ended attempts, other issues, other repositories and other forges do not count.
    await ps.create_attempt(attempt(7, state=S.failed))
    await ps.create_attempt(attempt(8))
    await ps.create_attempt(attempt(7, repo="octo/lib"))
    await ps.create_attempt(attempt(7, forge_id="f2"))
    # Once the first ends, the issue may have a new one.
    await ps.save_attempt(first.model_copy(update={"state": S.done}))
    await ps.create_attempt(attempt(7))
    assert len(await ps.list_attempts(number=7, repo="octo/app", forge_id="f1", active=True)) == 1


async def test_racing_attempts_at_one_issue_start_only_one(ps: PipelineStore) -> None:
    results = await asyncio.gather(
        *(ps.create_attempt(attempt(9)) for _ in range(6)), return_exceptions=True
    )
    assert sum(isinstance(r, domain.Attempt) for r in results) == 1
    assert sum(isinstance(r, errors.ConflictError) for r in results) == 5
    assert len(await ps.list_attempts(number=9)) == 1


async def test_save_attempt_replaces_it_and_keeps_the_rule(ps: PipelineStore) -> None:
    old = models.utcnow() - timedelta(hours=1)
    live = await ps.create_attempt(attempt(1, created_at=old, updated_at=old))
    saved = await ps.save_attempt(
        live.model_copy(
            update={
                "state": S.running,
                "run_id": "r1",
                "branch": "b1",
                "created_at": models.utcnow(),
            }
        )
    )
    assert saved.created_at == old and saved.updated_at > old
    assert await ps.get_attempt(live.id) == saved
    assert await ps.attempt_for_run("r1") == saved
    assert await ps.branch_taken("f1", "octo/app", "b1")

    ended = await ps.save_attempt(saved.model_copy(update={"state": S.stopped}))
    assert await ps.list_attempts(active=True) == []
    assert await ps.list_attempts(active=False) == [ended]

    # Reactivating the ended one while the issue has another active attempt is refused.
    await ps.create_attempt(attempt(1))
    with pytest.raises(errors.ConflictError, match="octo/app#1 already has an active attempt"):
        await ps.save_attempt(ended.model_copy(update={"state": S.pending}))
    assert (await ps.get_attempt(ended.id)).state is S.stopped
    with pytest.raises(errors.NotFoundError, match="no attempt with id 'ghost'"):
        await ps.save_attempt(attempt(2, id="ghost"))


async def test_list_attempts_filters_newest_first(ps: PipelineStore) -> None:
    made = [
        await ps.create_attempt(attempt(1, state=S.failed, **at(1))),
        await ps.create_attempt(attempt(1, **at(3))),
        await ps.create_attempt(attempt(2, repo="octo/lib", **at(2))),
        await ps.create_attempt(attempt(1, forge_id="f2", state=S.done, **at(4))),
    ]

    async def ids(**filters: Any) -> list[int]:
        return [made.index(a) for a in await ps.list_attempts(**filters)]

    assert await ids() == [3, 1, 2, 0]
    assert await ids(forge_id="f1") == [1, 2, 0]
    assert await ids(repo="octo/app") == [3, 1, 0]
    assert await ids(number=1, forge_id="f1") == [1, 0]
    assert await ids(active=True) == [1, 2]
    assert await ids(active=False, forge_id="f1") == [0]
    assert await ids(limit=2) == [3, 1]
    assert await ids(limit=0) == []
    with pytest.raises(errors.InvalidInputError, match="limit must be 0 or more"):
        await ps.list_attempts(limit=-5)


async def test_lookups_by_run_pull_request_seq_and_branch(ps: PipelineStore) -> None:
    assert await ps.next_seq("f1", "octo/app", 4) == 1
    assert await ps.attempt_for_run("r1") is None
    assert await ps.attempts_for_pull("f1", "octo/app", 10) == []
    assert not await ps.branch_taken("f1", "octo/app", "agentfarm/issue-4-x")

    issue = await ps.create_attempt(
        attempt(4, state=S.done, run_id="r1", branch="agentfarm/issue-4-x", pr_number=10, **at(1))
    )
    review = await ps.create_attempt(
        attempt(4, seq=2, kind=domain.AttemptKind.review, run_id="r2", pr_number=10,
                branch="agentfarm/issue-4-x", parent_id=issue.id, **at(2))
    )  # fmt: skip
    other = await ps.create_attempt(attempt(5, state=S.done, seq=7, pr_number=10, **at(3)))
    await ps.create_attempt(attempt(6, pr_number=11, **at(4)))

    assert await ps.attempt_for_run("r1") == issue
    assert await ps.attempt_for_run("r2") == review
    assert await ps.attempts_for_pull("f1", "octo/app", 10) == [other, review, issue]
    assert await ps.attempts_for_pull("f2", "octo/app", 10) == []
    assert await ps.next_seq("f1", "octo/app", 4) == 3
    assert await ps.next_seq("f1", "octo/app", 5) == 8
    assert await ps.next_seq("f2", "octo/app", 4) == 1
    assert await ps.branch_taken("f1", "octo/app", "agentfarm/issue-4-x")
    assert not await ps.branch_taken("f1", "octo/lib", "agentfarm/issue-4-x")
    assert not await ps.branch_taken("f2", "octo/app", "agentfarm/issue-4-x")


# --- flags and dispatches ----------------------------------------------------------------


async def test_flags_are_set_replaced_and_removed(ps: PipelineStore) -> None:
    assert await ps.get_flag("pipeline.paused") is None
    await ps.set_flag("pipeline.paused", "1")
    await ps.set_flag("other", "x")
    assert await ps.get_flag("pipeline.paused") == "1"
    await ps.set_flag("pipeline.paused", "by ada")
    assert await ps.get_flag("pipeline.paused") == "by ada"
    await ps.set_flag("pipeline.paused", None)
    assert await ps.get_flag("pipeline.paused") is None
    await ps.set_flag("pipeline.paused", None)  # removing a missing flag is fine
    assert await ps.get_flag("other") == "x"


async def test_a_dispatch_key_is_used_once_per_caller(ps: PipelineStore) -> None:
    assert await ps.get_dispatch("ada", "k1") is None
    made = domain.Dispatch(key="k1", caller="ada", digest="d" * 64, run_id="run1")
    assert await ps.create_dispatch(made) == made
    assert await ps.get_dispatch("ada", "k1") == made
    with pytest.raises(errors.ConflictError, match="idempotency key 'k1' was already used"):
        await ps.create_dispatch(made.model_copy(update={"run_id": "run2"}))
    assert (await ps.get_dispatch("ada", "k1")) == made
    other = made.model_copy(update={"caller": "token", "run_id": "run3"})
    assert await ps.create_dispatch(other) == other
    assert await ps.get_dispatch("token", "k1") == other
    assert await ps.get_dispatch("bob", "k1") is None
