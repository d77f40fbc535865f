"""The cockpit's spend card: today and this month against the budgets, per config,
origin and forge, and the last 30 days as an inline SVG bar chart (no JavaScript, no library)."""

from __future__ import annotations

from dataclasses import dataclass

from agentfarm.supervisor import spend

WIDTH = 300
HEIGHT = 60
GAP = 2


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: str
    cost_usd: float
    runs: int


def bars(days: list[spend.SpendDay], *, width: int = WIDTH, height: int = HEIGHT) -> list[Bar]:
    """One bar per day, scaled to the dearest day; a day with spend shows at least 1 unit."""
    if not days:
        return []
    top = max(d.cost_usd for d in days) or 1.0
    step = width / len(days)
    out = []
    for i, d in enumerate(days):
        h = 0.0 if d.cost_usd <= 0 else max(1.0, height * d.cost_usd / top)
        out.append(
            Bar(
                x=round(i * step, 2),
                y=round(height - h, 2),
                width=round(max(step - GAP, 1.0), 2),
                height=round(h, 2),
                day=d.day,
                cost_usd=d.cost_usd,
                runs=d.runs,
            )
        )
    return out
