from __future__ import annotations

import re


def blocked_by(body: str) -> list[int]:
    return sorted({int(n) for n in re.findall(r"(?im)blocked by #(\d+)", body)})
