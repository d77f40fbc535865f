"""The event drafts the supervisor writes itself, and backend records turned into drafts."""

from __future__ import annotations

import json
from typing import Any

from agentfarm.agents.base import StreamParser
from agentfarm.backends.base import BranchOutcome, Record
from agentfarm.domain import models
from agentfarm.domain.redact import Redactor


def status_event(status: models.RunStatus, **extra: Any) -> models.EventDraft:
    data: dict[str, Any] = {"status": status.value}
    data.update({k: v for k, v in extra.items() if v is not None})
    return models.EventDraft(type=models.EventType.run_status, data=data)


def notice_event(message: str) -> models.EventDraft:
    return models.EventDraft(type=models.EventType.run_notice, data={"message": message})


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
        return [notice_event(record.data.decode("utf-8", "replace"))]
    if record.kind == "egress":
        return [egress_event(record.data)]
    return []


def summary_fields(parser: StreamParser) -> dict[str, Any]:
    """The run's figures the parser has so far, as run fields."""
    s = parser.summary
    fields: dict[str, Any] = {"usage": s.usage}
    if s.session_id is not None:
        fields["session_id"] = s.session_id
    if s.cost_usd is not None:
        fields["cost_usd"] = s.cost_usd
    if s.num_turns is not None:
        fields["num_turns"] = s.num_turns
    return fields


def redact(draft: models.EventDraft, redactor: Redactor) -> models.EventDraft:
    if not redactor:
        return draft
    return draft.model_copy(update={"data": redactor.data(draft.data)})
