"""Run and config ids in paths: any malformed id is an unknown one (404), never a 422 or 500.

A run id is 12 lower-case hex digits; anything else cannot name a run, so it is answered
before the store is asked. A config key is an id or a name; the store answers for those.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Path

from agentfarm.domain import errors

RUN_ID_RE = re.compile(r"[0-9a-f]{12}")
#: Longer than any config id or name (names are at most 64 characters).
MAX_KEY = 64


def shown(value: str) -> str:
    """A user-supplied id as an error message may quote it: short and printable."""
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


def last_event_id(header: str | None) -> int:
    """The sequence number in a ``Last-Event-ID`` header, 0 when it is not one: ASCII digits
    only (``str.isdigit`` also takes ``²``) and short enough for SQLite's integers."""
    text = (header or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else 0


#: What the schema documents for ids and keys: the server answers anything else with 404.
RUN_ID_SCHEMA = {"pattern": f"^{RUN_ID_RE.pattern}$"}
KEY_SCHEMA = {"minLength": 1, "maxLength": MAX_KEY, "pattern": "^[^\\x00-\\x1f\\x7f]+$"}


def run_id(
    run_id: Annotated[str, Path(description="Run id.", json_schema_extra=RUN_ID_SCHEMA)],
) -> str:
    if not RUN_ID_RE.fullmatch(run_id):
        raise errors.NotFoundError(f"no run with id {shown(run_id)}; `agentfarm ls` lists runs")
    return run_id


def config_key(
    key: Annotated[str, Path(description="Config id or name.", json_schema_extra=KEY_SCHEMA)],
) -> str:
    if not key or len(key) > MAX_KEY or not key.isprintable():
        raise errors.NotFoundError(
            f"no config with id or name {shown(key)}; `agentfarm config ls` lists them"
        )
    return key


RunId = Annotated[str, Depends(run_id)]
ConfigKey = Annotated[str, Depends(config_key)]
