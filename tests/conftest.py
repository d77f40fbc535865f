"""Fixtures shared by every test tier: the real Claude Code and Codex CLIs, the fake model
APIs and a JSON endpoint on loopback (a notification target)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import realparts
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.json_endpoint import JsonEndpoint
from tests.fakes.openai_api import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
#: A key the fake accepts; long enough to be masked by the redactor, obviously not real.
FAKE_API_KEY = "sk-ant-test-0000000000000000"


@pytest.fixture(scope="session")
def claude_bin() -> str:
    """The pinned Claude Code CLI: ``$AGENTFARM_TOOLS`` (``make test`` installs it), else PATH."""
    tools = Path(os.environ.get("AGENTFARM_TOOLS", ROOT / ".tools"))
    candidate = tools / "node_modules" / ".bin" / "claude"
    if candidate.exists() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("claude")
    if not found:
        realparts.missing(
            "Claude Code CLI", "run `make test` (scripts/install-claude.sh installs it)"
        )
    return found


@pytest.fixture(scope="session")
def codex_bin() -> str:
    """The pinned Codex CLI: ``$AGENTFARM_TOOLS`` (``make test`` installs it), else PATH."""
    tools = Path(os.environ.get("AGENTFARM_TOOLS", ROOT / ".tools"))
    candidate = tools / "node_modules" / ".bin" / "codex"
    if candidate.exists() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("codex")
    if not found:
        realparts.missing("Codex CLI", "run `make codex` (scripts/install-codex.sh installs it)")
    return found


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    """One fake Responses API for the session; tests pick scenarios with prompt markers."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """One fake Messages API for the session; tests pick scenarios with prompt markers."""
    with FakeAnthropic() as fake:
        yield fake


AgentEnv = Callable[..., dict[str, str]]


@pytest.fixture
def endpoint() -> Iterator[JsonEndpoint]:
    """A JSON endpoint on loopback that keeps what is posted to it (Apprise ``json://``)."""
    server = JsonEndpoint()
    yield server
    server.close()


@pytest.fixture
def agent_env(fake_anthropic: FakeAnthropic, tmp_path: Path) -> AgentEnv:
    """``agent_env(**extra)``: a full environment that points the CLI at the fake model, with a
    private HOME (the CLI keeps its state there) and a git identity for commits."""
    home = tmp_path / "agent-home"
    home.mkdir(exist_ok=True)

    def build(**extra: str) -> dict[str, str]:
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ANTHROPIC_", "CLAUDE_", "GIT_"))
        }
        return {
            **inherited,
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
            "ANTHROPIC_API_KEY": FAKE_API_KEY,
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "GIT_AUTHOR_NAME": "Agent",
            "GIT_AUTHOR_EMAIL": "agent@example.com",
            "GIT_COMMITTER_NAME": "Agent",
            "GIT_COMMITTER_EMAIL": "agent@example.com",
            **extra,
        }

    return build
