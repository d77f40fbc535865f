from __future__ import annotations

import re

from agentfarm.domain import pipeline as domain

_MARKER = re.compile(r"<!-- agentfarm:attempt:([A-Za-z0-9_-]+) -->")


def render(
    attempt: domain.Attempt,
    *,
    run_url: str | None,
    cost_usd: float | None = None,
    label: str | None = None,
    mention: str | None = None,
) -> str:
    lines = [f"<!-- agentfarm:attempt:{attempt.id} -->", f"agentfarm: {attempt.state.value}"]
    for step in ("queued", "running", "pushed", "pull_request"):
        lines.append(f"- [{'x' if step in attempt.steps else ' '}] {step}")
    if run_url:
        lines.append(f"run: {run_url}")
    if attempt.pr_url:
        lines.append(f"pull request: {attempt.pr_url}")
    if attempt.reason:
        lines.append(attempt.reason)
    return "\n".join(lines)


def attempt_marker(body: str) -> str | None:
    match = _MARKER.search(body)
    return match.group(1) if match else None
