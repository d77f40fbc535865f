"""The local backend: agents in bubblewrap sandboxes on this machine, one monitor per run.

``LocalBackend`` lives in :mod:`agentfarm.backends.local.backend`; it is imported lazily here
so that the monitor process (which imports this package) starts without pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentfarm.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from agentfarm.backends.local.backend import LocalBackend

        return LocalBackend
    raise AttributeError(name)
