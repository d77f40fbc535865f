"""The event drafts the supervisor writes itself, and backend records turned into drafts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentfarm.agents import usage_limit
from agentfarm.agents.base import StreamParser
from agentfarm.backends.base import BranchOutcome, Record
from agentfarm.domain import launch, models, present, pricing
from agentfarm.domain.redact import Redactor


def status_event(status: models.RunStatus, **extra: Any) -> models.EventDraft:
    data: dict[str, Any] = {"status": status.value}
    data.update({k: v for k, v in extra.items() if v is not None})
    return models.EventDraft(type=models.EventType.run_status, data=data)


def notice_event(message: str) -> models.EventDraft:
    return models.EventDraft(type=models.EventType.run_notice, data={"message": message})


def stop_asked_event() -> models.EventDraft:
    """A stop answered before the run had an agent process to stop: kept, so that a restart
    of the control plane before the start still stops it (:func:`stop_was_asked`)."""
    message = "a stop was asked for while the agent was starting: it stops once started"
    return models.EventDraft(
        type=models.EventType.run_notice, data={"message": message, "stop_asked": True}
    )


def stop_was_asked(recent: list[models.Event]) -> bool:
    """Whether ``recent`` (a run's latest events, ascending) hold a stop asked for since the
    run's last status change."""
    for event in reversed(recent):
        if event.type == models.EventType.run_status:
            return False
        if event.type == models.EventType.run_notice and event.data.get("stop_asked") is True:
            return True
    return False


def waiting_event(seconds: float) -> models.EventDraft:
    """A turn has ended and the agent waits ``seconds`` for a follow-up (its stdin stays open
    that long); the event's time plus ``seconds`` is when the run ends without one."""
    return models.EventDraft(type=models.EventType.run_waiting, data={"seconds": seconds})


def branch_event(outcome: BranchOutcome) -> models.EventDraft:
    """Where the run's branch ended up: what the pipeline reads to tell "no commits",
    "pushed at <sha>" and "push rejected: <git's words>" apart."""
    return models.EventDraft(type=models.EventType.run_branch, data=outcome.to_data())


def egress_event(payload: bytes) -> models.EventDraft:
    """A connection the sandbox's egress proxy refused (``host``, ``port``, ``reason``)."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"reason": payload.decode("utf-8", "replace")[:500]}
    data = {k: body[k] for k in ("host", "port", "reason") if k in body}
    return models.EventDraft(type=models.EventType.sandbox_egress_denied, data=data)


def translate(parser: StreamParser, record: Record, redactor: Redactor) -> list[models.EventDraft]:
    """The drafts one backend record makes: agent output through the agent's parser, masked
    before parsing (and again after, by the caller): a parser may cut a long string, and a
    cut secret is no longer whole for a later mask to find."""
    if record.kind == "stdout":
        return parser.feed_stdout(redactor.raw(record.data))
    if record.kind == "stderr":
        return parser.feed_stderr(redactor.raw(record.data))
    if record.kind == "notice":
        text = record.data.decode("utf-8", "replace")
        seconds = launch.waiting_seconds(text)
        if seconds is not None:
            return [waiting_event(seconds)]
        return [notice_event(text)]
    if record.kind == "egress":
        return [egress_event(record.data)]
    return []


@dataclass(frozen=True)
class Pricer:
    """Estimates the cost of an agent that reports tokens only, from the server's price table
    and the run's model (None: the CLI's default, priced as ``default``)."""

    prices: Mapping[str, pricing.ModelPrice]
    model: str | None

    def cost(self, usage: models.Usage) -> float | None:
        return pricing.estimate(self.prices, self.model, usage)

    def result(self, draft: models.EventDraft) -> models.EventDraft:
        """An ``agent.result`` with its turn's estimated cost, marked as an estimate."""
        if draft.type != models.EventType.agent_result or draft.data.get("cost_usd") is not None:
            return draft
        try:
            usage = models.Usage.model_validate(draft.data.get("usage") or {})
        except ValueError:
            return draft
        data = {**draft.data, "cost_usd": self.cost(usage), "cost_estimated": True}
        return draft.model_copy(update={"data": data})


def summary_fields(
    parser: StreamParser,
    pricer: Pricer | None = None,
    *,
    base: models.Continuation | None = None,
) -> dict[str, Any]:
    """The run's figures the parser has so far, as run fields (with an estimated cost when
    the agent reports none and a ``pricer`` is given); ``base`` holds those of the run's
    earlier agent processes (a resumed agent counts from zero)."""
    s = parser.summary
    base = base or models.Continuation()
    usage = models.Usage(
        **{
            name: getattr(s.usage, name) + getattr(base.base_usage, name)
            for name in models.Usage.model_fields
        }
    )
    fields: dict[str, Any] = {"usage": usage}
    if s.session_id is not None:
        fields["session_id"] = s.session_id
    # The agent's last figure plus the estimate of its replies since (Claude Code reports
    # dollars only with a result): a run stopped in the middle of a turn still counts.
    cost = s.cost_usd if s.live_cost_usd is None else max(s.live_cost_usd, s.cost_usd or 0.0)
    if cost is None and pricer is not None and s.usage.total > 0:
        cost = pricer.cost(s.usage)
    if cost is not None or base.base_cost_usd is not None:
        fields["cost_usd"] = (cost or 0.0) + (base.base_cost_usd or 0.0)
    if s.num_turns is not None or base.base_num_turns is not None:
        fields["num_turns"] = (s.num_turns or 0) + (base.base_num_turns or 0)
    warning = s.limit_warning
    fields["warning"] = None if warning is None else warning_sentence(warning)
    return fields


def warning_sentence(limit: usage_limit.Limit) -> str:
    """An ``allowed_warning``, for the run page and the dashboard."""
    used = f" ({limit.utilization:.0%} used)" if limit.utilization is not None else ""
    window = (limit.limit_type or "usage").replace("_", "-")
    resets = ""
    if limit.resets_at is not None:
        resets = f"; it resets at {fmt_time(datetime.fromtimestamp(limit.resets_at, UTC))}"
    return f"the model's {window} limit is close{used}{resets}"


fmt_time = present.fmt_time


def redact(draft: models.EventDraft, redactor: Redactor) -> models.EventDraft:
    """``draft`` with every secret in its data masked. Most events hold none: their data's
    JSON, which the store needs anyway, tells (``Redactor.found_in``) without walking it."""
    if not redactor or not redactor.found_in(draft.data_json()):
        return draft
    return draft.model_copy(update={"data": redactor.data(draft.data)})
