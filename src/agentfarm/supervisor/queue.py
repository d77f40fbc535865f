"""The queue's order and its caps: which queued runs may start now, and what each of the
others waits for.

Pure: the dispatcher (to launch) and the API (to show a run's place) both call :func:`plan`
on what the store holds, so what a person sees is what the dispatcher does. Caps: the global
one, per backend, per repository (of all runs, and of pipeline runs, default 1), per config,
and day or month budgets that hold runs until they reset. A run that a cap holds does not hold
up runs behind it that no cap holds. Nothing running is ever evicted: caps only decide what
starts next.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from agentfarm.domain import models
from agentfarm.settings import Settings


class QueueInfo(BaseModel):
    """Where a queued run stands."""

    position: int = Field(..., description="1 for the next run to start.")
    length: int = Field(..., description="Runs waiting in `queued`.")
    waiting_for: str | None = Field(
        None,
        description="What holds the run, e.g. `global cap 4/4`, `config x 1/1`, or a budget "
        "with its reset time; null: it starts as soon as the dispatcher takes it.",
    )


@dataclass(frozen=True)
class Caps:
    total: int
    per_backend: Mapping[str, int] = field(default_factory=dict)
    #: 0: no cap.
    per_repo: int = 0
    pipeline_per_repo: int = 1
    person_first: bool = True

    @classmethod
    def of(cls, settings: Settings) -> Caps:
        return cls(
            total=settings.max_concurrent_runs,
            per_backend=dict(settings.max_concurrent_per_backend),
            per_repo=settings.max_concurrent_per_repo,
            pipeline_per_repo=settings.pipeline_max_concurrent_per_repo,
            person_first=settings.queue_person_first,
        )


@dataclass(frozen=True)
class Holds:
    """Budgets reached: the farm's (a sentence, or None) and per config id."""

    farm: str | None = None
    configs: Mapping[str, str] = field(default_factory=dict)
    #: Single runs held (by run id), e.g. on credentials whose usage limit has not reset.
    runs: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    start: list[models.Run] = field(default_factory=list)
    info: dict[str, QueueInfo] = field(default_factory=dict)


def order(queued: Iterable[models.Run], *, person_first: bool) -> list[models.Run]:
    """The order runs leave the queue: a person's first (when so configured), then oldest."""

    def key(run: models.Run) -> tuple[int, str, str]:
        rank = 0 if not person_first or run.origin == "person" else 1
        return (rank, run.created_at.isoformat(), run.id)

    return sorted(queued, key=key)


class _Counts:
    def __init__(self, runs: Iterable[models.Run], busy: int) -> None:
        runs = list(runs)
        self.total = max(busy, len(runs))
        self.backend = Counter(r.spec.backend.type for r in runs)
        self.repo = Counter(r.spec.repo for r in runs)
        self.pipeline_repo = Counter(r.spec.repo for r in runs if r.origin == "pipeline")
        self.config = Counter(r.config_id for r in runs if r.config_id)

    def add(self, run: models.Run) -> None:
        self.total += 1
        self.backend[run.spec.backend.type] += 1
        self.repo[run.spec.repo] += 1
        if run.origin == "pipeline":
            self.pipeline_repo[run.spec.repo] += 1
        if run.config_id:
            self.config[run.config_id] += 1


def _held_by(
    run: models.Run,
    counts: _Counts,
    caps: Caps,
    configs: Mapping[str, models.AgentConfig],
    holds: Holds,
) -> str | None:
    if holds.farm:
        return holds.farm
    if run.id in holds.runs:
        return holds.runs[run.id]
    if run.config_id and run.config_id in holds.configs:
        return holds.configs[run.config_id]
    if counts.total >= caps.total:
        return f"global cap {counts.total}/{caps.total}"
    backend = run.spec.backend.type
    cap = caps.per_backend.get(backend)
    if cap is not None and counts.backend[backend] >= cap:
        return f"backend {backend} {counts.backend[backend]}/{cap}"
    config = configs.get(run.config_id) if run.config_id else None
    if config is not None and config.max_concurrent is not None:
        used = counts.config[config.id]
        if used >= config.max_concurrent:
            return f"config {config.name} {used}/{config.max_concurrent}"
    repo = run.spec.repo
    if caps.per_repo and counts.repo[repo] >= caps.per_repo:
        return f"repository {repo} {counts.repo[repo]}/{caps.per_repo}"
    if run.origin == "pipeline" and caps.pipeline_per_repo:
        used = counts.pipeline_repo[repo]
        if used >= caps.pipeline_per_repo:
            return f"pipeline runs on repository {repo} {used}/{caps.pipeline_per_repo}"
    return None


def plan(
    queued: Iterable[models.Run],
    occupying: Iterable[models.Run],
    caps: Caps,
    *,
    configs: Mapping[str, models.AgentConfig],
    holds: Holds | None = None,
    busy: int = 0,
) -> Plan:
    """What starts now, and every queued run's place. ``occupying``: runs holding a slot
    (starting, running, or being launched); ``busy``: how many slots are held, if more than
    ``occupying`` shows (a run whose task is still finishing)."""
    holds = holds or Holds()
    counts = _Counts(occupying, busy)
    ordered = order(queued, person_first=caps.person_first)
    result = Plan()
    for position, run in enumerate(ordered, 1):
        reason = _held_by(run, counts, caps, configs, holds)
        if reason is None:
            result.start.append(run)
            counts.add(run)
        result.info[run.id] = QueueInfo(position=position, length=len(ordered), waiting_for=reason)
    return result
