"""Budgets on the fake backend: a run that crosses its dollar, turn or time budget is stopped
and ends ``stopped`` with a reason naming the budget; day and month budgets hold queued runs
(or refuse launches) until they reset, and stop running ones when so configured; spend is
summed per day, config, origin and forge."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agentfarm.agents.claude_stream import ClaudeStreamParser
from agentfarm.agents.codex import CodexAdapter
from agentfarm.backends import fake
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import errors, models
from agentfarm.domain import pipeline as pipeline_domain
from agentfarm.domain.launch import AgentCommand
from agentfarm.store import Store
from agentfarm.store.pipeline import PipelineStore
from agentfarm.store.secrets import SecretStore
from agentfarm.store.stats import RunStats
from agentfarm.supervisor import budgets, spend
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web.pages import spend_card, templating
from tests.unit.conftest import AppFactory, make_settings
from tests.unit.supervisor_kit import ended, has_status, slow_script, spec
from tests.unit.test_supervisor_codex import COST, PRICES, RECORDED


def line(obj: dict[str, object]) -> Step:
    return Step("stdout", json.dumps(obj).encode())


def assistant(message_id: str, *, input_tokens: int = 10) -> Step:
    message = {
        "id": message_id,
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": f"turn {message_id}"}],
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    return line({"type": "assistant", "session_id": "s", "message": message})


def then_busy(*steps: Step) -> Callable[[models.Run, AgentCommand], list[Step]]:
    """The steps, then ten minutes of work unless the run is stopped."""

    def script(run: models.Run, command: AgentCommand) -> list[Step]:
        start = Step("started", b'{"pid": 0}')
        return [start, *steps, Step("exit", exit=ExitInfo(exit_code=0), delay=600)]

    return script


@pytest.fixture
def backend_script() -> fake.Script:
    return slow_script


async def notices(store: Store, run_id: str) -> list[str]:
    events = await store.list_events(run_id)
    return [e.data["message"] for e in events if e.type == models.EventType.run_notice]


async def spent_run(
    store: Store,
    cost: float,
    *,
    config: models.AgentConfig | None = None,
    finished_at: datetime | None = None,
    origin: models.RunOrigin = "person",
) -> models.Run:
    run = models.Run(
        spec=spec(),
        origin=origin,
        config_id=config.id if config else None,
        config_name=config.name if config else None,
    )
    await store.create_run(run)
    return await store.update_run(
        run.id,
        status=models.RunStatus.succeeded,
        cost_usd=cost,
        finished_at=finished_at or models.utcnow(),
    )


# --- a run's own budgets ---------------------------------------------------------------------


async def test_a_run_over_its_dollar_budget_is_stopped_with_the_budget_named(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    # 200k input tokens of Sonnet: $0.60 by the streamed estimate, before any result.
    backend.script = then_busy(assistant("m1", input_tokens=200_000))
    sup = supervisors()
    await sup.start()
    run = await sup.submit(spec(max_budget_usd=0.5))
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    assert done.error == "budget: $0.60 spent of $0.50"
    assert done.cost_usd == pytest.approx(0.6 + 15e-6)  # the estimate counts toward spend
    assert "budget: $0.60 spent of $0.50: stopping the agent" in await notices(store, run.id)
    assert backend.runs[run.id].stop_requested
    assert "--max-budget-usd" in backend.commands[run.id].argv


async def test_a_run_over_its_turns_is_stopped_for_any_agent(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    backend.script = then_busy(assistant("m1"), assistant("m1"), assistant("m2"), assistant("m3"))
    sup = supervisors()
    await sup.start()
    run = await sup.submit(spec(max_turns=2))
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    assert done.error == "turns: 2 of 2"


async def test_a_run_within_its_budgets_is_left_alone(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    result = {"type": "result", "subtype": "success", "is_error": False, "result": "ok",
              "num_turns": 2, "total_cost_usd": 0.01, "usage": {}}  # fmt: skip
    steps = [Step("started", b"{}"), assistant("m1"), assistant("m2"), line(result)]
    backend.script = lambda run, command: [*steps, Step("exit", exit=ExitInfo(exit_code=0))]
    sup = supervisors()
    await sup.start()
    run = await sup.submit(spec(max_turns=2, max_budget_usd=1.0, max_minutes=60))
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.succeeded and done.error is None


async def test_the_agents_own_budget_end_reads_as_a_budget_stop(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    result = {"type": "result", "subtype": "error_max_budget_usd", "is_error": True,
              "num_turns": 1, "total_cost_usd": 0.2034, "usage": {}}  # fmt: skip
    steps = [Step("started", b"{}"), line(result), Step("exit", exit=ExitInfo(exit_code=0))]
    backend.script = lambda run, command: steps
    sup = supervisors()
    await sup.start()
    run = await sup.submit(spec(max_budget_usd=0.2))
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    assert done.error == "budget: $0.20 spent of $0.20"


async def test_a_run_over_its_time_is_stopped(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    sup = supervisors()
    await sup.start()
    run = await sup.submit(spec(max_minutes=0.001))
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    assert done.error == "time: 0.001 min"


def test_the_claude_parser_estimates_cost_and_counts_turns_while_streaming() -> None:
    parser = ClaudeStreamParser()
    for step in (assistant("a", input_tokens=1_000_000), assistant("a"), assistant("b")):
        parser.feed_stdout(step.data)
    assert parser.summary.live_turns == 2
    # The repeated message counts once, at its highest usage: $3 + 15e-6, then b's 45e-6.
    assert parser.summary.live_cost_usd == pytest.approx(3.0 + 15e-6 + 45e-6)
    assert parser.summary.cost_usd is None  # the agent's own figure comes with its result
    result = {"type": "result", "subtype": "success", "total_cost_usd": 2.5, "usage": {}}
    parser.feed_stdout(json.dumps(result).encode())
    assert parser.summary.live_cost_usd == 2.5  # the agent's figure replaces the estimate
    parser.feed_stdout(assistant("c", input_tokens=1_000_000).data)
    assert parser.summary.live_cost_usd == pytest.approx(2.5 + 3.0 + 15e-6)


def test_budget_reasons() -> None:
    summary = ClaudeStreamParser().summary
    summary.cost_usd, summary.live_cost_usd = 0.1, 0.7
    assert budgets.run_over(spec(max_budget_usd=0.7), summary) == "budget: $0.70 spent of $0.70"
    assert budgets.run_over(spec(max_budget_usd=0.8), summary) is None
    summary.live_turns = 3
    assert budgets.run_over(spec(max_turns=3), summary) is None
    assert budgets.run_over(spec(max_turns=2), summary) == "turns: 2 of 2"
    assert budgets.time_over(30) == "time: 30 min"


def test_periods_reset_at_utc_midnight_and_on_the_first_of_the_month() -> None:
    now = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert budgets.day_start(now) == datetime(2026, 12, 31, tzinfo=UTC)
    assert budgets.month_start(now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert budgets.next_month(now) == datetime(2027, 1, 1, tzinfo=UTC)
    assert budgets.next_month(datetime(2026, 2, 14, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)


# --- day and month budgets ---------------------------------------------------------------------


async def test_a_reached_config_budget_holds_its_runs_queued_with_the_reset_time(
    store: Store, backend: FakeBackend, supervisors: Callable[..., Supervisor]
) -> None:
    capped = await store.create_config(
        models.AgentConfig(name="pricey", repo="/srv/repo", prompt="p", daily_budget_usd=1.0)
    )
    free = await store.create_config(models.AgentConfig(name="free", repo="/srv/repo", prompt="p"))
    await spent_run(store, 1.5, config=capped)
    await spent_run(store, 9.0, config=free)  # another config's spend does not count
    sup = supervisors()
    await sup.start()
    held = await sup.submit(capped.spec(), config=capped)
    other = await sup.submit(free.spec(), config=free)
    await has_status(store, other.id, models.RunStatus.running)  # the queue was looked at
    assert (await store.get_run(held.id)).status is models.RunStatus.queued
    tomorrow = budgets.day_start(models.utcnow()) + timedelta(days=1)
    waiting = (await sup.queue_info([held.id]))[held.id].waiting_for
    assert waiting == (
        "budget: config pricey daily $1.50 spent of $1.00; it resets at "
        f"{tomorrow:%Y-%m-%d} 00:00 UTC"
    )


async def test_a_reached_farm_budget_refuses_launches_when_so_configured(
    store: Store, supervisors: Callable[..., Supervisor]
) -> None:
    await spent_run(store, 3.0)
    # Spend of last month does not count this month.
    await spent_run(store, 50.0, finished_at=budgets.month_start(models.utcnow()) - timedelta(1))
    sup = supervisors(monthly_budget_usd=2.5, budget_reached_launch="refuse")
    with pytest.raises(errors.LimitReachedError) as refused:
        await sup.submit(spec())
    exc = refused.value
    assert exc.code == "budget_reached"
    assert exc.details["resets_at"] == budgets.next_month(models.utcnow()).isoformat()
    assert exc.details["spent_usd"] == 3.0 and exc.details["limit_usd"] == 2.5
    assert str(exc).startswith("budget: farm monthly $3.00 spent of $2.50; it resets at ")
    assert len(await store.list_runs()) == 2  # nothing queued
    fine = supervisors(monthly_budget_usd=3.5, budget_reached_launch="refuse")
    assert (await fine.submit(spec())).status is models.RunStatus.queued


async def test_running_runs_finish_by_default_and_stop_when_so_configured(
    store: Store, supervisors: Callable[..., Supervisor]
) -> None:
    finishing = supervisors(daily_budget_usd=1.0)
    await finishing.start()
    run = await finishing.submit(spec())
    await has_status(store, run.id, models.RunStatus.running)
    await spent_run(store, 2.0)
    await finishing.fleet.check_budgets()
    assert (await store.get_run(run.id)).status is models.RunStatus.running
    await finishing.close()

    stopping = supervisors(daily_budget_usd=1.0, budget_reached_running="stop")
    await stopping.start()  # reattaches the running run
    await stopping.fleet.check_budgets()
    done = await ended(store, run.id)
    assert done.status is models.RunStatus.stopped
    assert done.error is not None
    assert done.error.startswith("budget: farm daily $2.00 spent of $1.00; it resets at ")


async def test_spend_per_day_config_and_origin(store: Store, tmp_path: Path) -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    cfg = await store.create_config(
        models.AgentConfig(name="fixer", repo="/r", daily_budget_usd=5, monthly_budget_usd=50)
    )
    await spent_run(store, 1.25, config=cfg, finished_at=now - timedelta(hours=1))
    await spent_run(store, 0.5, origin="pipeline", finished_at=now - timedelta(days=2))
    await spent_run(store, 7.0, finished_at=now - timedelta(days=45))  # out of range
    settings = make_settings(tmp_path / "data", daily_budget_usd=10)
    report = await spend.report(settings, RunStats(store.database), [cfg], now=now)
    assert (report.today_usd, report.month_usd) == (1.25, 1.75)
    assert report.daily_budget_usd == 10 and report.monthly_budget_usd is None
    assert report.day_resets_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert [(x.name, x.today_usd, x.month_usd, x.daily_budget_usd) for x in report.by_config] == [
        ("fixer", 1.25, 1.25, 5),
        ("one-off", 0.0, 0.5, None),
    ]
    assert [(x.name, x.month_usd) for x in report.by_origin] == [
        ("person", 1.25),
        ("pipeline", 0.5),
    ]
    assert len(report.days) == spend.DAYS
    assert report.days[-1].day == "2026-11-30" and report.days[-1].cost_usd == 1.25
    assert report.days[-3].cost_usd == 0.5 and report.days[-3].runs == 1
    assert sum(d.cost_usd for d in report.days) == 1.75


async def test_spend_per_forge_through_the_pipeline_s_attempts(
    store: Store, tmp_path: Path
) -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    pipeline = PipelineStore(store.database)
    forges = {}
    for name in ("gh", "home"):
        forges[name] = await pipeline.create_forge(
            pipeline_domain.Forge.model_validate({
                "name": name, "kind": "github", "base_url": "https://api.github.com",
                "token_secret": "GH_TOKEN", "repos": ["octo/app"],
                "webhook_secret_name": pipeline_domain.webhook_secret_name(name),
            })
        )  # fmt: skip
    for number, (name, cost, days) in enumerate(
        [("gh", 1.0, 0), ("gh", 0.25, 0), ("home", 2.0, 1), ("gh", 9.0, 40)], start=1
    ):
        run = await spent_run(
            store, cost, origin="pipeline", finished_at=now - timedelta(days=days, hours=1)
        )
        await pipeline.create_attempt(
            pipeline_domain.Attempt(
                forge_id=forges[name].id, repo="octo/app", number=number, run_id=run.id,
                state=pipeline_domain.AttemptState.done,
            )
        )  # fmt: skip
    await spent_run(store, 0.5, finished_at=now)  # a person's run: no forge
    settings = make_settings(tmp_path / "data")
    report = await spend.report(settings, RunStats(store.database), [], now=now)
    assert [(x.name, x.today_usd, x.month_usd) for x in report.by_forge] == [
        ("gh", 1.25, 1.25),
        ("home", 0.0, 2.0),
    ]
    assert [(x.name, x.month_usd) for x in report.by_origin] == [
        ("person", 0.5),
        ("pipeline", 3.25),
    ]
    assert report.month_usd == 3.75  # each run counted once
    card = templating.fragment(
        "_spend.html", spend=report, bars=spend_card.bars(report.days),
        chart_width=spend_card.WIDTH, chart_height=spend_card.HEIGHT,
    )  # fmt: skip
    assert '<tr class="spend-forge muted"><td>forge home</td>' in card


async def test_the_api_and_the_dashboard_show_spend(app_client: AppFactory) -> None:
    async with app_client(daily_budget_usd=4) as client:
        report = (await client.get("/api/spend")).json()
        assert report["today_usd"] == 0 and report["daily_budget_usd"] == 4
        assert len(report["days"]) == 30
        page = await client.get("/")
        assert page.status_code == 200
        assert 'class="spend-chart"' in page.text and "<rect" in page.text
        assert "today $0.0000 of $4.0000" in page.text
        assert report["by_forge"] == []


async def test_a_dollar_budget_holds_for_an_agent_that_reports_tokens_only(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTFARM_MODEL_PRICES", PRICES)
    recorded = [Step("stdout", x) for x in RECORDED.read_bytes().splitlines()]
    backend = FakeBackend(then_busy(*recorded))
    settings = make_settings(
        tmp_path / "data", openai_base_url="http://127.0.0.1:9/v1", codex_api_key="sk-codex-0123456"
    )
    sup = Supervisor(settings, store, SecretStore(settings.secrets_path), {"local": backend},
                     {"codex": CodexAdapter()})  # fmt: skip
    try:
        await sup.start()
        spec = models.AgentSpec(
            repo="/srv/repo", prompt="p", agent="codex", model="gpt-test", max_budget_usd=1.0
        )
        done = await ended(store, (await sup.submit(spec)).id)
    finally:
        await sup.close()
        await backend.shutdown()
    assert done.status is models.RunStatus.stopped
    assert done.error == f"budget: ${COST:,.2f} spent of $1.00"
