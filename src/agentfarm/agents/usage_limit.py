"""The model's usage limit (a subscription's 5-hour or weekly window), as Claude Code reports it.

Preferred: the CLI's ``rate_limit_event`` line (``rate_limit_info.status`` is ``allowed``,
``allowed_warning`` or ``rejected``; ``resetsAt`` in epoch seconds, milliseconds in some
versions). Fallback: the sentences other versions print instead (``Claude AI usage limit
reached|<epoch>``, ``You've hit your 5-hour limit · resets 10:10am (UTC)``, ``5-hour limit
reached ∙ resets 3am``, ``... resets Apr 23 at 4pm (America/Los_Angeles)``). Pure: the time a
sentence means is computed against a given ``now``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

STATUSES = ("allowed", "allowed_warning", "rejected")
#: An epoch above this is in milliseconds (1e12 s is in the year 33658).
MILLISECONDS = 1e12


@dataclass(frozen=True)
class Limit:
    status: str
    #: When the limit resets (epoch seconds); None when the agent did not say.
    resets_at: float | None = None
    limit_type: str | None = None
    utilization: float | None = None
    #: ``event`` (a rate_limit_event) or ``text`` (a sentence).
    source: str = "event"

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"

    def to_data(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "resets_at": self.resets_at,
            "limit_type": self.limit_type,
            "utilization": self.utilization,
            "source": self.source,
        }


def epoch(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value) / 1000 if value > MILLISECONDS else float(value)


def from_event(obj: dict[str, Any]) -> Limit | None:
    """A ``rate_limit_event`` line, or None if it is not one the parser understands."""
    info = obj.get("rate_limit_info")
    if not isinstance(info, dict) or info.get("status") not in STATUSES:
        return None
    kind = info.get("rateLimitType")
    utilization = info.get("utilization")
    return Limit(
        status=str(info["status"]),
        resets_at=epoch(info.get("resetsAt")),
        limit_type=kind if isinstance(kind, str) else None,
        utilization=float(utilization)
        if isinstance(utilization, int | float) and not isinstance(utilization, bool)
        else None,
    )


_PIPE = re.compile(r"usage limit reached\|(\d{9,14})", re.IGNORECASE)
_SENTENCE = re.compile(
    r"(?:hit your (?:[\w-]+ )?limit|limit reached|usage limit)\b.{0,40}?\bresets\s+"
    r"(?:(?P<month>[A-Z][a-z]{2,8})\s+(?P<day>\d{1,2}),?\s+(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>am|pm)?"
    r"(?:\s*\((?P<tz>[A-Za-z_/+\-0-9]{1,64})\))?",
    re.IGNORECASE,
)
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
)}  # fmt: skip


def from_text(text: str, now: datetime) -> Limit | None:
    """A usage-limit sentence, or None. A reset time without a date is the next such time
    after ``now``; without a zone it is read as UTC."""
    found = _PIPE.search(text)
    if found:
        return Limit("rejected", epoch(int(found.group(1))), source="text")
    match = _SENTENCE.search(text)
    if match is None:
        if re.search(r"usage limit reached|hit your (?:[\w-]+ )?limit", text, re.IGNORECASE):
            return Limit("rejected", None, source="text")
        return None
    return Limit("rejected", _reset_time(match, now), source="text")


def _reset_time(match: re.Match[str], now: datetime) -> float | None:
    hour, minute = int(match["hour"]), int(match["minute"] or 0)
    ampm = (match["ampm"] or "").lower()
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    zone: Any = UTC
    if match["tz"] and match["tz"].upper() != "UTC":
        try:
            zone = ZoneInfo(match["tz"])
        except (ZoneInfoNotFoundError, ValueError):
            zone = UTC
    local_now = now.astimezone(zone)
    if match["month"]:
        month = _MONTHS.get(match["month"][:3].lower())
        if month is None:
            return None
        try:
            when = local_now.replace(
                month=month, day=int(match["day"]), hour=hour, minute=minute, second=0,
                microsecond=0,
            )  # fmt: skip
        except ValueError:
            return None
        if when < local_now - timedelta(days=180):  # "Jan 2" said in late December
            when = when.replace(year=when.year + 1)
        return when.timestamp()
    when = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if when <= local_now:
        when += timedelta(days=1)
    return when.timestamp()
