"""Where an agent's binary is on this host. The adapter names it (``claude``, ``codex``); the local
backend finds it here, so the supervisor never needs to know where or whether it runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agentfarm.domain import errors
from agentfarm.settings import Settings

#: This checkout's pinned tools (``make run`` installs them).
CHECKOUT_TOOLS = Path(__file__).resolve().parents[4] / ".tools"


#: Each agent CLI's setting, its name as an environment variable, and how to install it.
KNOWN = {
    "claude": ("claude_bin", "AGENTFARM_CLAUDE_BIN", "the Claude Code CLI", "make run"),
    "codex": ("codex_bin", "AGENTFARM_CODEX_BIN", "the Codex CLI", "make codex"),
}
#: Where npm puts Codex's native binary; the ``codex`` on PATH is a Node launcher for it.
CODEX_NATIVE = ("codex-linux-x64", "vendor", "x86_64-unknown-linux-musl", "bin", "codex")


def _configured(name: str, settings: Settings) -> str | None:
    known = KNOWN.get(name)
    value = getattr(settings, known[0]) if known else None
    return value if isinstance(value, str) and value else None


def native(path: str) -> str:
    """The program itself for an npm launcher script: Codex's ``bin/codex.js`` runs a native
    binary from a sibling package, which the sandbox would not see (only the program's own
    directory is bound). Anything else is returned as it is."""
    if not path.endswith(".js"):
        return path
    package = Path(path).resolve().parents[1]  # .../@openai/codex
    candidate = package.parent.joinpath(*CODEX_NATIVE)
    return str(candidate) if os.access(candidate, os.X_OK) else path


def find(name: str, settings: Settings) -> str:
    """The executable for ``name`` (blocking): a path is taken as given; a bare name is the
    configured path (AGENTFARM_CLAUDE_BIN for ``claude``, AGENTFARM_CODEX_BIN for ``codex``),
    the pinned copy (AGENTFARM_TOOLS, then this checkout's), then PATH. The real path, as its
    directory gets bound into the sandbox."""
    if os.sep in name:
        if not os.path.exists(name):
            raise errors.LaunchError(f"the agent program {name!r} was not found")
        return native(os.path.realpath(name))
    configured = _configured(name, settings)
    known = KNOWN.get(name)
    if configured and known:  # the operator's explicit choice: that one or a clear error
        if not os.access(configured, os.X_OK):
            raise errors.ConfigurationError(f"{known[1]}={configured} is not an executable file")
        return native(os.path.realpath(configured))
    candidates: list[str | None] = []
    tools = os.environ.get("AGENTFARM_TOOLS")
    if tools:
        candidates.append(str(Path(tools) / "node_modules" / ".bin" / name))
    candidates += [str(CHECKOUT_TOOLS / "node_modules" / ".bin" / name), shutil.which(name)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return native(os.path.realpath(candidate))
    if known:
        _setting, env, what, make = known
        raise errors.ConfigurationError(
            f"{what} was not found: run `{make}` (it installs the pinned version) or set {env}"
        )
    raise errors.LaunchError(f"the agent program {name!r} was not found")
