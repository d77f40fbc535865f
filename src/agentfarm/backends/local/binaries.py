"""Where an agent's binary is on this host. The adapter names it (``claude``); the local
backend finds it here, so the supervisor never needs to know where or whether it runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agentfarm.domain import errors
from agentfarm.settings import Settings

#: This checkout's pinned tools (``make run`` installs them).
CHECKOUT_TOOLS = Path(__file__).resolve().parents[4] / ".tools"


def _configured(name: str, settings: Settings) -> str | None:
    return settings.claude_bin if name == "claude" else None


def find(name: str, settings: Settings) -> str:
    """The executable for ``name`` (blocking): a path is taken as given; a bare name is the
    configured path (AGENTFARM_CLAUDE_BIN for ``claude``), the pinned copy (AGENTFARM_TOOLS,
    then this checkout's), then PATH. The real path, as its directory gets bound into the
    sandbox."""
    if os.sep in name:
        if not os.path.exists(name):
            raise errors.LaunchError(f"the agent program {name!r} was not found")
        return os.path.realpath(name)
    configured = _configured(name, settings)
    candidates: list[str | None] = [configured]
    tools = os.environ.get("AGENTFARM_TOOLS")
    if tools:
        candidates.append(str(Path(tools) / "node_modules" / ".bin" / name))
    candidates += [str(CHECKOUT_TOOLS / "node_modules" / ".bin" / name), shutil.which(name)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    if configured:
        raise errors.ConfigurationError(
            f"AGENTFARM_CLAUDE_BIN={configured} is not an executable file"
        )
    if name == "claude":
        raise errors.ConfigurationError(
            "the Claude Code CLI was not found: run `make run` (it installs the pinned "
            "version) or set AGENTFARM_CLAUDE_BIN"
        )
    raise errors.LaunchError(f"the agent program {name!r} was not found")
