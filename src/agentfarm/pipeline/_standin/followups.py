from __future__ import annotations

from typing import Any

from agentfarm.domain import pipeline as domain


async def followup_for_comment(
    pstore: Any, client: Any, forge: Any, trigger: Any
) -> domain.Attempt | None:
    return None


async def followup_for_status(
    pstore: Any, client: Any, forge: Any, repo: str, sha: str
) -> domain.Attempt | None:
    return None


async def poll_checks(pstore: Any, client: Any, forge: Any) -> list[domain.Attempt]:
    return []
