"""Real parts (the Claude Code CLI, bubblewrap, chromium, the Kubernetes test cluster) are
required in CI: a missing one fails the run there, and is skipped with a reason elsewhere."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(part: str, how: str) -> NoReturn:
    """Call when ``part`` is not available; ``how`` says how to install it."""
    message = f"{part} is not available: {how}"
    if in_ci():
        pytest.fail(f"CI=true and a real part is missing. {message}", pytrace=False)
    pytest.skip(message)
