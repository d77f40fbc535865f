"""Budgets: per run (US dollars, turns, wall-clock minutes) and per UTC day and calendar month,
farm-wide and per config.

A run's own budgets are checked on every batch of its output (dollars from the agent's
reported or estimated cost, turns from its stream) and by a timer (minutes); the run is then
stopped through the supervisor's stop path and ends ``stopped`` with a reason naming the
budget. Day and month budgets are checked against spend summed from runs' ``cost_usd``: a
reached one holds queued runs (or refuses launches, ``budget_reached_launch``) until it resets
at UTC midnight or on the first of the month, and stops running ones if so configured
(``budget_reached_running``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from agentfarm.agents.base import Summary
from agentfarm.domain import errors, models
from agentfarm.settings import Settings
from agentfarm.store.stats import RunStats
from agentfarm.supervisor.queue import Holds

# --- a run's own budgets -------------------------------------------------------------------


def spent(summary: Summary, cost: float | None = None) -> float | None:
    """What the run has cost: the agent's own figure, the run's (``cost``: estimated from
    tokens for an agent that reports no dollars), or the streamed estimate when that is
    higher (the agent's figure arrives only with a result)."""
    figures = [c for c in (summary.cost_usd, summary.live_cost_usd, cost) if c is not None]
    return max(figures) if figures else None


def check_supported(spec: models.AgentSpec) -> None:
    """Refuse (400) a dollar or turn budget on an agent that reports neither: it could not
    hold, and a budget silently ignored is worse than none."""
    if spec.agent not in models.OUTPUT_ONLY_AGENTS:
        return
    given = [n for n in ("max_budget_usd", "max_turns") if getattr(spec, n) is not None]
    if given:
        raise errors.InvalidInputError(
            f"the {spec.agent} agent reports no cost and no turns, so {' and '.join(given)} "
            "cannot hold for it: remove it and use max_minutes (the time budget) instead"
        )


def money(value: float) -> str:
    return f"${value:,.2f}"


def run_over(spec: models.AgentSpec, summary: Summary, cost: float | None = None) -> str | None:
    """The reason to stop a run that has crossed its dollar or turn budget, else None.
    ``cost``: the run's cost as recorded, when the agent reports none of its own."""
    cost = spent(summary, cost)
    if spec.max_budget_usd is not None and cost is not None and cost >= spec.max_budget_usd:
        return f"budget: {money(cost)} spent of {money(spec.max_budget_usd)}"
    turns = max(summary.num_turns or 0, summary.live_turns)
    # The agent may use all its turns: crossed once it starts one more.
    if spec.max_turns is not None and turns > spec.max_turns:
        return f"turns: {spec.max_turns} of {spec.max_turns}"
    return None


def ended_by_own_budget(spec: models.AgentSpec, summary: Summary) -> str | None:
    """The agent stopped itself at a budget it was given (Claude Code's ``--max-budget-usd``
    and ``--max-turns``): the reason, as if agentfarm had stopped it."""
    if summary.result_subtype == "error_max_budget_usd" and spec.max_budget_usd is not None:
        cost = max(spent(summary) or 0.0, spec.max_budget_usd)
        return f"budget: {money(cost)} spent of {money(spec.max_budget_usd)}"
    if summary.result_subtype == "error_max_turns" and spec.max_turns is not None:
        return f"turns: {spec.max_turns} of {spec.max_turns}"
    return None


def time_over(minutes: float) -> str:
    return f"time: {minutes:g} min"


def deadline(run: models.Run) -> datetime | None:
    """When a run with ``max_minutes`` must have ended (None: no wall-clock budget)."""
    if run.spec.max_minutes is None:
        return None
    start = run.started_at or models.utcnow()
    return start + timedelta(minutes=run.spec.max_minutes)


# --- day and month budgets -------------------------------------------------------------------


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def next_month(now: datetime) -> datetime:
    start = month_start(now)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


@dataclass(frozen=True)
class Reached:
    """One day or month budget that is used up."""

    scope: str  # "farm" or "config <name>"
    period: str  # "daily" or "monthly"
    spent: float
    limit: float
    resets_at: datetime

    @property
    def sentence(self) -> str:
        when = self.resets_at.strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"budget: {self.scope} {self.period} {money(self.spent)} spent of "
            f"{money(self.limit)}; it resets at {when}"
        )


#: Told of every reached budget found (the supervisor's notifications; it tells each once).
OnReached = Callable[[Reached, models.AgentConfig | None], Awaitable[None]]


class Budgets:
    """Day and month budgets against the store's spend figures."""

    def __init__(self, settings: Settings, stats: RunStats) -> None:
        self.settings = settings
        self.stats = stats
        self.on_reached: OnReached | None = None

    async def _tell(
        self,
        farm: Reached | None,
        per_config: dict[str, Reached],
        configs: list[models.AgentConfig],
    ) -> None:
        if self.on_reached is None:
            return
        if farm is not None:
            await self.on_reached(farm, None)
        by_id = {c.id: c for c in configs}
        for config_id, found in per_config.items():
            await self.on_reached(found, by_id.get(config_id))

    async def reached(
        self, configs: Iterable[models.AgentConfig], now: datetime | None = None
    ) -> tuple[Reached | None, dict[str, Reached]]:
        """The farm's reached budget (if any) and each config's (by config id)."""
        now = now or models.utcnow()
        day, month = day_start(now), month_start(now)
        periods = (
            ("daily", day, day + timedelta(days=1)),
            ("monthly", month, next_month(now)),
        )
        s = self.settings
        farm: Reached | None = None
        for (period, since, resets), limit in zip(
            periods, (s.daily_budget_usd, s.monthly_budget_usd), strict=True
        ):
            if limit is not None and farm is None:
                total = await self.stats.spent(since=since)
                if total >= limit:
                    farm = Reached("farm", period, total, limit, resets)
        per_config: dict[str, Reached] = {}
        budgeted = [c for c in configs if c.daily_budget_usd or c.monthly_budget_usd]
        if not budgeted:
            await self._tell(farm, per_config, budgeted)
            return farm, per_config
        by_day = await self.stats.spent_by_config(since=day)
        by_month = await self.stats.spent_by_config(since=month)
        for config in budgeted:
            figures = (
                ("daily", config.daily_budget_usd, by_day.get(config.id, 0.0), periods[0][2]),
                ("monthly", config.monthly_budget_usd, by_month.get(config.id, 0.0), periods[1][2]),
            )
            for period, limit, total, resets in figures:
                if limit is not None and total >= limit:
                    per_config[config.id] = Reached(
                        f"config {config.name}", period, total, limit, resets
                    )
                    break
        await self._tell(farm, per_config, budgeted)
        return farm, per_config

    async def holds(self, configs: Iterable[models.AgentConfig]) -> Holds:
        farm, per_config = await self.reached(configs)
        return Holds(
            farm=farm.sentence if farm else None,
            configs={cid: r.sentence for cid, r in per_config.items()},
        )

    async def admit(self, config: models.AgentConfig | None) -> None:
        """With ``budget_reached_launch = refuse``: a launch while a budget it falls under is
        reached is refused (429), saying when the budget resets."""
        if self.settings.budget_reached_launch != "refuse":
            return
        farm, per_config = await self.reached([config] if config else [])
        found = farm or (per_config.get(config.id) if config else None)
        if found is None:
            return
        raise errors.LimitReachedError(
            f"{found.sentence}: launches are refused until then (raise the budget to launch now)",
            code="budget_reached",
            scope=found.scope,
            period=found.period,
            spent_usd=round(found.spent, 4),
            limit_usd=found.limit,
            resets_at=found.resets_at.isoformat(),
        )
