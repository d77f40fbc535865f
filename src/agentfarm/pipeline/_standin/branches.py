from __future__ import annotations

import re
from collections.abc import Callable


def valid_branch(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9/_.-]{1,100}", name)) and ".." not in name


def issue_branch(number: int, title: str, taken: Callable[[str], bool]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40].strip("-") or "issue"
    base = f"agentfarm/issue-{number}-{slug}"
    name, n = base, 1
    while taken(name):
        n += 1
        name = f"{base}-{n}"
    return name
