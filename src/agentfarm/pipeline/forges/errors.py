"""Forge errors carry their retry meaning, as kopf's do: temporary (try again after ``delay``
seconds) or permanent (retrying changes nothing; the message says what to do).

Messages name the method, the path and the forge's own reason. They never contain the token:
it is only ever in a request header, and no request or response object is chained.
"""

from __future__ import annotations

from agentfarm.domain import errors


class ForgeError(errors.AgentfarmError):
    """Root of the errors a forge client raises."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status the forge answered, None for a network failure.
        self.status = status


class TemporaryForgeError(ForgeError, ConnectionError):
    """5xx, network trouble or a rate limit: the same call may succeed after ``delay``."""

    def __init__(self, message: str, *, delay: float, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.delay = delay


class RateLimitedError(TemporaryForgeError):
    """The forge asked us to slow down; ``delay`` is what it asked for."""


class PermanentForgeError(ForgeError, RuntimeError):
    """A 4xx or an answer we cannot use: retrying the same call will not help."""


class ForgeNotFoundError(PermanentForgeError, LookupError):
    """The repository, issue, comment or branch does not exist (or the token cannot see it)."""
