"""Queue and caps: the plan (pure) and the supervisor on the fake backend: caps per backend,
repository and config hold runs queued with a reason, a person's launch goes first, the
queue's length is limited (429) and nothing running is ever evicted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pydantic
import pytest

from agentfarm.backends import fake
from agentfarm.backends.fake import FakeBackend
from agentfarm.domain import errors, models
from agentfarm.store import Store
from agentfarm.supervisor import queue
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import AUTH, AppFactory, make_settings
from tests.unit.supervisor_kit import ended, has_status, slow_script, spec
from tests.unit.test_api import wait_running

T0 = models.utcnow()


def run(
    repo: str = "/r",
    *,
    origin: models.RunOrigin = "person",
    config: models.AgentConfig | None = None,
    age: int = 0,
    backend: str = "local",
) -> models.Run:
    spec = models.AgentSpec.model_validate(
        {"repo": repo, "prompt": "p", "backend": {"type": backend}}
    )
    return models.Run(
        spec=spec,
        origin=origin,
        config_id=config.id if config else None,
        config_name=config.name if config else None,
        created_at=T0 - timedelta(seconds=age),
    )


def running(r: models.Run) -> models.Run:
    return r.model_copy(update={"status": models.RunStatus.running})


def plan(
    queued: list[models.Run], occupying: list[models.Run], caps: queue.Caps, **kw: object
) -> queue.Plan:
    configs = kw.pop("configs", {})
    return queue.plan(queued, occupying, caps, configs=configs, **kw)  # type: ignore[arg-type]


# --- the plan ------------------------------------------------------------------------------


def test_the_global_cap_holds_every_queued_run_with_its_place() -> None:
    waiting = [run(age=3), run(age=2), run(age=1)]
    p = plan(waiting, [running(run()), running(run())], queue.Caps(total=2))
    assert p.start == []
    assert [(i.position, i.length, i.waiting_for) for i in p.info.values()] == [
        (1, 3, "global cap 2/2"),
        (2, 3, "global cap 2/2"),
        (3, 3, "global cap 2/2"),
    ]


def test_a_free_slot_goes_to_the_oldest_and_the_rest_wait() -> None:
    old, new = run(age=5), run(age=1)
    p = plan([new, old], [], queue.Caps(total=1))
    assert p.start == [old]
    assert p.info[old.id].waiting_for is None
    assert p.info[new.id].waiting_for == "global cap 1/1"


def test_per_backend_cap() -> None:
    local, k8s = run(age=2), run(age=1, backend="kubernetes")
    caps = queue.Caps(total=10, per_backend={"local": 1})
    p = plan([local, k8s], [running(run())], caps)
    assert p.start == [k8s]
    assert p.info[local.id].waiting_for == "backend local 1/1"


def test_a_config_cap_holds_its_runs_but_not_the_runs_behind_them() -> None:
    capped = models.AgentConfig(name="x", repo="/r", max_concurrent=1)
    other = models.AgentConfig(name="y", repo="/r")
    first, second, third = run(config=capped, age=3), run(config=capped, age=2), run(config=other)
    configs = {capped.id: capped, other.id: other}
    p = plan([first, second, third], [], queue.Caps(total=10), configs=configs)
    assert p.start == [first, third]
    assert p.info[second.id].waiting_for == "config x 1/1"
    assert p.info[second.id].position == 2


def test_pipeline_runs_take_one_slot_per_repository_by_default() -> None:
    a1, a2 = run("/a", origin="pipeline", age=4), run("/a", origin="pipeline", age=3)
    b1, person = run("/b", origin="pipeline", age=2), run("/a", age=1)
    p = plan([a1, a2, b1, person], [], queue.Caps(total=10, person_first=False))
    assert p.start == [a1, b1, person]  # a person's run is not under the pipeline's cap
    assert p.info[a2.id].waiting_for == "pipeline runs on repository /a 1/1"


def test_the_per_repository_cap_counts_every_origin() -> None:
    caps = queue.Caps(total=10, per_repo=1)
    queued = run("/a")
    p = plan([queued], [running(run("/a", origin="api"))], caps)
    assert p.info[queued.id].waiting_for == "repository /a 1/1"


def test_a_persons_launch_goes_before_older_pipeline_runs_unless_configured_otherwise() -> None:
    robot, person = run(origin="pipeline", age=10), run(age=1)
    first = plan([robot, person], [], queue.Caps(total=1))
    assert first.start == [person]
    assert first.info[robot.id].position == 2
    fifo = plan([robot, person], [], queue.Caps(total=1, person_first=False))
    assert fifo.start == [robot]


def test_a_reached_budget_holds_runs_farm_wide_or_per_config() -> None:
    cfg = models.AgentConfig(name="x", repo="/r")
    mine, other = run(config=cfg, age=2), run(age=1)
    holds = queue.Holds(configs={cfg.id: "budget: config x daily ..."})
    p = plan([mine, other], [], queue.Caps(total=10), configs={cfg.id: cfg}, holds=holds)
    assert p.start == [other]
    assert p.info[mine.id].waiting_for == "budget: config x daily ..."
    farm = plan([mine, other], [], queue.Caps(total=10), holds=queue.Holds(farm="budget: farm"))
    assert farm.start == []


def test_busy_slots_count_even_when_the_runs_are_no_longer_listed() -> None:
    waiting = run()
    p = plan([waiting], [], queue.Caps(total=2), busy=2)
    assert p.info[waiting.id].waiting_for == "global cap 2/2"


# --- the supervisor ------------------------------------------------------------------------


@pytest.fixture
def backend_script() -> fake.Script:
    return slow_script


async def test_over_the_queue_limit_a_launch_is_refused_and_nothing_is_evicted(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors(max_concurrent_runs=1, max_queued_runs=2)
    await sup.start()
    first = await sup.submit(spec())
    await has_status(store, first.id, models.RunStatus.running)
    waiting = [await sup.submit(spec()), await sup.submit(spec())]
    with pytest.raises(errors.LimitReachedError) as refused:
        await sup.submit(spec())
    assert refused.value.code == "queue_full"
    assert refused.value.details == {"limit": 2, "count": 2}
    assert "2 runs wait" in str(refused.value) and "limit is 2" in str(refused.value)
    # Nothing was evicted or stopped to make room.
    assert (await store.get_run(first.id)).status is models.RunStatus.running
    assert [(await store.get_run(r.id)).status for r in waiting] == [models.RunStatus.queued] * 2
    assert len(await store.list_runs()) == 3
    info = await sup.queue_info()
    assert [(info[r.id].position, info[r.id].waiting_for) for r in waiting] == [
        (1, "global cap 1/1"),
        (2, "global cap 1/1"),
    ]


async def test_a_persons_run_starts_before_an_older_pipeline_run(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors(max_concurrent_runs=1)
    await sup.start()
    first = await sup.submit(spec())
    await has_status(store, first.id, models.RunStatus.running)
    robot = await sup.submit(spec("/other"), origin="pipeline")
    person = await sup.submit(spec("/third"))
    assert (await store.get_run(robot.id)).origin == "pipeline"
    info = await sup.queue_info()
    assert info[person.id].position == 1 and info[robot.id].position == 2
    await sup.stop_run(first.id)
    await has_status(store, person.id, models.RunStatus.running)
    assert (await store.get_run(robot.id)).status is models.RunStatus.queued
    await sup.stop_run(person.id)
    await has_status(store, robot.id, models.RunStatus.running)


async def test_a_config_cap_holds_a_second_run_while_other_configs_run(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    capped = await store.create_config(
        models.AgentConfig(name="one-at-a-time", repo="/srv/repo", prompt="p", max_concurrent=1)
    )
    other = await store.create_config(models.AgentConfig(name="free", repo="/srv/repo", prompt="p"))
    assert (await store.get_config("one-at-a-time")).max_concurrent == 1
    sup = supervisors()
    await sup.start()
    first = await sup.submit(capped.spec(), config=capped)
    await has_status(store, first.id, models.RunStatus.running)
    second = await sup.submit(capped.spec(), config=capped)
    third = await sup.submit(other.spec(), config=other)
    # The dispatcher passed over the held run to start the one behind it.
    await has_status(store, third.id, models.RunStatus.running)
    assert (await store.get_run(second.id)).status is models.RunStatus.queued
    info = await sup.queue_info([second.id])
    assert info[second.id].waiting_for == "config one-at-a-time 1/1"
    await sup.stop_run(first.id)
    await has_status(store, second.id, models.RunStatus.running)
    for r in (second, third):
        await sup.stop_run(r.id)
        assert (await ended(store, r.id)).status is models.RunStatus.stopped


async def test_the_api_shows_the_queue_and_answers_429_over_its_limit(
    app_client: AppFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.script = slow_script
    one_off = {"spec": {"repo": "/r", "prompt": "a"}}
    async with app_client(max_concurrent_runs=1, max_queued_runs=1) as client:
        first = (await client.post("/api/runs", json=one_off)).json()
        assert first["origin"] == "person"
        await wait_running(client, first["id"])
        assert (await client.get(f"/api/runs/{first['id']}")).json()["queue"] is None
        second = (await client.post("/api/runs", json={**one_off, "origin": "api"})).json()
        assert second["origin"] == "api" and second["status"] == "queued"
        expected = {"position": 1, "length": 1, "waiting_for": "global cap 1/1"}
        assert second["queue"] == expected
        assert (await client.get(f"/api/runs/{second['id']}")).json()["queue"] == expected
        listed = (await client.get("/api/runs")).json()
        assert {r["id"]: r["queue"] for r in listed}[second["id"]]["position"] == 1
        refused = await client.post("/api/runs", json=one_off)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "queue_full"
        assert (error["limit"], error["count"]) == (1, 1)
        assert "limit is 1" in error["message"]
        # A pipeline origin is the pipeline's own: the API does not take it.
        bad = await client.post("/api/runs", json={**one_off, "origin": "pipeline"})
        assert bad.status_code == 422
        for r in (second, first):
            await client.post(f"/api/runs/{r['id']}/stop", headers=AUTH)


async def test_launches_racing_for_the_last_places_never_overfill_the_queue(
    store: Store, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors(max_queued_runs=2)  # not started: every run stays queued
    results = await asyncio.gather(*(sup.submit(spec()) for _ in range(6)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, errors.LimitReachedError)]
    assert len(refused) == 4 and len(results) - len(refused) == 2
    assert len(await store.list_runs(statuses=[models.RunStatus.queued])) == 2


def test_per_backend_caps_read_from_the_environment(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_concurrent_per_backend="local=4, kubernetes=20")
    assert queue.Caps.of(settings).per_backend == {"local": 4, "kubernetes": 20}
    for bad, words in (("local", "is not `backend=number`"), ("local=0", "1 or more")):
        with pytest.raises(pydantic.ValidationError, match=words):
            make_settings(tmp_path, max_concurrent_per_backend=bad)
