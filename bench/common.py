"""Shared helpers for the benchmarks: a real server subprocess and the fake model API."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.anthropic_api import FakeAnthropic
from tests.integration.server import Server

__all__ = ["ROOT", "FakeAnthropic", "Server", "claude_bin", "make_repo", "median", "rss_kib"]


def claude_bin() -> str:
    tools = Path(os.environ.get("AGENTFARM_TOOLS", ROOT / ".tools"))
    path = tools / "node_modules" / ".bin" / "claude"
    if not path.exists():
        sys.exit("the Claude Code CLI is missing: run `make test` or scripts/install-claude.sh")
    return str(path)


def make_repo() -> Path:
    repo = Path(tempfile.mkdtemp(prefix="agentfarm-bench-")) / "repo"
    repo.mkdir()
    for args in (
        ["init", "-q", "-b", "main"],
        ["-c", "user.name=b", "-c", "user.email=b@e", "commit", "-q", "--allow-empty", "-m", "i"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    return repo


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
