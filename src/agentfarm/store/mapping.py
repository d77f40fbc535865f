"""Rows <-> models. Timestamps are ISO-8601 UTC text with microseconds (fixed width, so text
order is time order); ``spec``, ``usage`` and event ``data`` are compact JSON text.

A naive datetime is taken to be UTC. Every datetime read back is aware (UTC).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agentfarm.domain import errors, gittokens, models

#: Column order of the ``runs`` table as the store selects it: exactly the fields of ``Run``.
RUN_COLUMNS: tuple[str, ...] = (
    "id",
    "config_id",
    "config_name",
    "spec",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "branch",
    "workspace",
    "session_id",
    "cost_usd",
    "usage",
    "num_turns",
    "exit_code",
    "error",
)
#: Columns of ``runs`` that are not ``Run`` fields.
RUN_EXTRA_COLUMNS: tuple[str, ...] = ("ingest_cursor",)
#: ``Run`` fields kept inside the ``spec`` column's JSON (under ``_run``), not in columns of
#: their own: small facts about a run that need no index, added without a migration.
RUN_IN_SPEC: tuple[str, ...] = ("origin", "parked_until", "warning", "continuation")
_RUN_IN_SPEC_KEY = "_run"
CONFIG_COLUMNS: tuple[str, ...] = ("id", "name", "spec", "created_at", "updated_at")
EVENT_COLUMNS: tuple[str, ...] = ("run_id", "seq", "type", "ts", "data")

#: ``Run`` fields ``update_run`` may change.
UPDATABLE_RUN_FIELDS = frozenset(RUN_COLUMNS + RUN_IN_SPEC) - {"id"}
_RUN_TIME_FIELDS = frozenset({"created_at", "started_at", "finished_at"})
_RUN_JSON_FIELDS = frozenset({"spec", "usage"})


def dump_time(value: datetime) -> str:
    if value.tzinfo is UTC:  # most of them (every event's): no conversion to make
        return value.isoformat(timespec="microseconds")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def load_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# One encoder for every call: json.dumps builds a new one whenever separators are given.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def dump_json(value: Any) -> str:
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidInputError(f"cannot store a value that is not JSON: {exc}") from exc


# Runs


def run_value(field: str, value: Any) -> Any:
    """The column value for one (validated) ``Run`` field."""
    if value is None:
        return None
    if field in _RUN_JSON_FIELDS:
        return dump_json(value.model_dump(mode="json"))
    if field in _RUN_TIME_FIELDS:
        return dump_time(value)
    if field == "status":
        return models.RunStatus(value).value
    return value


def _spec_column(run: models.Run) -> str:
    spec = run.spec.model_dump(mode="json")
    extra = run.model_dump(mode="json", include=set(RUN_IN_SPEC))
    # Excluded from dumps so that no API response shows it; stored all the same.
    extra["continuation"]["credentials_key"] = run.continuation.credentials_key
    spec[_RUN_IN_SPEC_KEY] = extra
    return dump_json(spec)


def run_to_row(run: models.Run) -> tuple[Any, ...]:
    return tuple(
        _spec_column(run) if name == "spec" else run_value(name, getattr(run, name))
        for name in RUN_COLUMNS
    )


def run_assignments(run: models.Run, names: Sequence[str]) -> list[tuple[str, Any]]:
    """``(column, value)`` pairs that store the (validated) ``run``'s fields ``names``."""
    columns = sorted({"spec" if name in RUN_IN_SPEC else name for name in names})
    return [
        (col, _spec_column(run) if col == "spec" else run_value(col, getattr(run, col)))
        for col in columns
    ]


#: Validation context of rows read back: rules made stricter since they were stored (base
#: branch names) do not make them unreadable.
STORED = {"stored": True}


def row_to_run(row: Sequence[Any]) -> models.Run:
    data = dict(zip(RUN_COLUMNS, row, strict=True))
    for name in _RUN_JSON_FIELDS:
        data[name] = json.loads(data[name])
    extra = data["spec"].pop(_RUN_IN_SPEC_KEY, None) if isinstance(data["spec"], dict) else None
    if isinstance(extra, dict):
        data.update({k: v for k, v in extra.items() if k in RUN_IN_SPEC})
    for name in _RUN_TIME_FIELDS:
        if data[name] is not None:
            data[name] = load_time(data[name])
    _strip_repo_credentials(data["spec"])
    return models.Run.model_validate(data, context=STORED)


def _strip_repo_credentials(spec: Any) -> None:
    """Repository URLs with credentials are refused now; older rows load without them."""
    repo = spec.get("repo") if isinstance(spec, dict) else None
    if isinstance(repo, str) and gittokens.has_url_credentials(repo):
        spec["repo"] = gittokens.strip_url_credentials(repo)


#: Not a run field: with it, an ended run may go back to ``starting`` (``store.REOPEN``).
REOPEN = "reopen_ended_run"


def check_run_fields(fields: Any) -> None:
    """Raise ``InvalidInputError`` unless every name in ``fields`` is an updatable Run field."""
    unknown = sorted(set(fields) - UPDATABLE_RUN_FIELDS - {REOPEN})
    if unknown:
        raise errors.InvalidInputError(
            f"cannot update run field(s) {', '.join(unknown)}: "
            f"updatable fields are {', '.join(sorted(UPDATABLE_RUN_FIELDS))}"
        )


# Configs


#: Config fields that are not the config's spec but are kept in its ``spec`` column's JSON
#: (caps and budgets: about the config, not snapshotted by its runs).
CONFIG_IN_SPEC: tuple[str, ...] = ("max_concurrent", "daily_budget_usd", "monthly_budget_usd")


def config_spec_json(cfg: models.AgentConfig) -> str:
    spec = cfg.spec().model_dump(mode="json")
    spec.update({name: getattr(cfg, name) for name in CONFIG_IN_SPEC if getattr(cfg, name)})
    return dump_json(spec)


def config_to_row(cfg: models.AgentConfig) -> tuple[Any, ...]:
    return (
        cfg.id,
        cfg.name,
        config_spec_json(cfg),
        dump_time(cfg.created_at),
        dump_time(cfg.updated_at),
    )


def row_to_config(row: Sequence[Any]) -> models.AgentConfig:
    id_, name, spec, created_at, updated_at = row
    stored = json.loads(spec)
    _strip_repo_credentials(stored)
    return models.AgentConfig.model_validate(
        {
            **stored,
            "id": id_,
            "name": name,
            "created_at": load_time(created_at),
            "updated_at": load_time(updated_at),
        },
        context=STORED,
    )


# Events


def draft_to_values(draft: models.EventDraft) -> tuple[str, str, str]:
    """``(type, ts, data)`` of a draft, ready to insert (its data's JSON, encoded once, is the
    one the hub and the SSE stream use too)."""
    return (draft.type, dump_time(draft.ts), draft.data_json())


def row_to_event(row: Sequence[Any]) -> models.Event:
    run_id, seq, type_, ts, data = row
    event = models.Event(
        run_id=run_id, seq=seq, type=type_, ts=load_time(ts), data=json.loads(data)
    )
    # The stored text is the data's JSON, served as it is; unless it may hold NaN or Infinity
    # (rows written before the store took pydantic's encoding), which are not JSON: then the
    # event encodes its data afresh (NaN as null), as the model would.
    if "NaN" in data or "Infinity" in data:
        return event
    return event.with_data_json(data)
