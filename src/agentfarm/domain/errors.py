"""One exception root. Leaf errors also inherit a builtin so callers can catch either.

Every message says what went wrong and what to do about it. The HTTP mapping lives in
one place (``agentfarm.web.errors``).
"""

from __future__ import annotations


class AgentfarmError(Exception):
    """Root of every error agentfarm raises on purpose."""


class NotFoundError(AgentfarmError, LookupError):
    """A config, run or secret does not exist."""


class ConflictError(AgentfarmError, ValueError):
    """The request clashes with existing state (a duplicate name, a finished run)."""


class InvalidInputError(AgentfarmError, ValueError):
    """Input that passed schema validation but makes no sense (a repo that is not a repo)."""


class UnauthorizedError(AgentfarmError, PermissionError):
    """The request does not prove who sent it (a missing or wrong webhook signature)."""


class ForbiddenError(AgentfarmError, PermissionError):
    """Who asked may not do this (a scope or role they lack): HTTP 403."""


class ConfigurationError(AgentfarmError, RuntimeError):
    """The host or the server is not set up for what was asked (no bubblewrap, no credentials)."""


class LaunchError(AgentfarmError, RuntimeError):
    """Preparing or starting an agent failed; the run ends ``failed`` with this message."""


class BackendError(AgentfarmError, RuntimeError):
    """A backend operation failed (talking to a monitor, a pod, a sandbox)."""


class StorageFullError(AgentfarmError, OSError):
    """The disk under the data directory is full: nothing could be written (HTTP 507). What was
    stored before stays; the same request works again once there is space."""


class StatusConflictError(ConflictError):
    """A run's status changed under us: the change asked for is no longer allowed."""

    def __init__(self, message: str, *, current: str) -> None:
        super().__init__(message)
        #: The run's status as stored (a ``RunStatus`` value).
        self.current = current


class LimitReachedError(AgentfarmError, RuntimeError):
    """A launch refused by a limit (the queue's length, a day or month budget): HTTP 429.
    ``code`` names the limit; ``details`` (the limit, the current count, when it resets) go
    into the error body beside the message."""

    def __init__(self, message: str, *, code: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.details = details
