"""What the farm spent: today, this month, per config and per origin, and the last 30 days,
with the day and month budgets beside them (``GET /api/spend``, the cockpit's spend card).

``by_origin`` groups pipeline runs apart from people's; ``by_forge`` splits the pipeline's
per forge (the store finds a run's forge through the pipeline's attempt that names it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from agentfarm.domain import models
from agentfarm.settings import Settings
from agentfarm.store.stats import DaySpend, RunStats
from agentfarm.supervisor import budgets

DAYS = 30


class SpendLine(BaseModel):
    name: str = Field(
        ...,
        description="A config's name (`one-off` for runs of none), an origin, or a forge's name.",
    )
    today_usd: float
    month_usd: float
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None


class SpendDay(BaseModel):
    day: str = Field(..., description="A UTC day, `YYYY-MM-DD`.")
    cost_usd: float
    runs: int


class SpendReport(BaseModel):
    today_usd: float
    month_usd: float
    daily_budget_usd: float | None
    monthly_budget_usd: float | None
    day_resets_at: datetime
    month_resets_at: datetime
    by_config: list[SpendLine]
    by_origin: list[SpendLine]
    by_forge: list[SpendLine] = Field(
        ..., description="Pipeline runs per forge they worked for (other runs are in none)."
    )
    days: list[SpendDay] = Field(..., description=f"The last {DAYS} days, oldest first.")


def _lines(
    rows: Iterable[DaySpend], key: str, today: str, month: str
) -> dict[str, tuple[float, float]]:
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        if key == "forge" and row.forge is None:
            continue
        name = {"config": row.config_name or "one-off", "origin": row.origin}.get(key, row.forge)
        if name is not None and row.day >= month:
            sums[name][1] += row.cost_usd
            if row.day == today:
                sums[name][0] += row.cost_usd
    return {name: (t, m) for name, (t, m) in sums.items()}


async def report(
    settings: Settings,
    stats: RunStats,
    configs: Iterable[models.AgentConfig],
    now: datetime | None = None,
) -> SpendReport:
    now = now or models.utcnow()
    day = budgets.day_start(now)
    first = day - timedelta(days=DAYS - 1)
    month = budgets.month_start(now)
    rows = await stats.by_day(since=min(first, month), now=now)
    today_key, month_key = day.date().isoformat(), month.date().isoformat()
    per_day: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for row in rows:
        per_day[row.day][0] += row.cost_usd
        per_day[row.day][1] += row.runs
    days = []
    for offset in range(DAYS):
        key = (first + timedelta(days=offset)).date().isoformat()
        cost, runs = per_day.get(key, [0.0, 0])
        days.append(SpendDay(day=key, cost_usd=round(cost, 6), runs=int(runs)))
    by_name = {c.name: c for c in configs}
    config_lines = []
    for name, (t, m) in sorted(_lines(rows, "config", today_key, month_key).items()):
        cfg = by_name.get(name)
        config_lines.append(
            SpendLine(
                name=name,
                today_usd=round(t, 6),
                month_usd=round(m, 6),
                daily_budget_usd=cfg.daily_budget_usd if cfg else None,
                monthly_budget_usd=cfg.monthly_budget_usd if cfg else None,
            )
        )
    origin_lines = [
        SpendLine(name=name, today_usd=round(t, 6), month_usd=round(m, 6))
        for name, (t, m) in sorted(_lines(rows, "origin", today_key, month_key).items())
    ]
    forge_lines = [
        SpendLine(name=name, today_usd=round(t, 6), month_usd=round(m, 6))
        for name, (t, m) in sorted(_lines(rows, "forge", today_key, month_key).items())
    ]
    return SpendReport(
        today_usd=round(sum(line.today_usd for line in config_lines), 6),
        month_usd=round(sum(line.month_usd for line in config_lines), 6),
        daily_budget_usd=settings.daily_budget_usd,
        monthly_budget_usd=settings.monthly_budget_usd,
        day_resets_at=day + timedelta(days=1),
        month_resets_at=budgets.next_month(now),
        by_config=config_lines,
        by_origin=origin_lines,
        by_forge=forge_lines,
        days=days,
    )
