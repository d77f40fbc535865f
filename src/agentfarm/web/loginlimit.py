"""Failed-login throttling: a sliding window of failures per user name and per client address.

In memory, per process: a restart forgets the counts, which only helps an attacker who can
also restart the server. Successful logins do not clear the address window (an attacker with
one valid account must not reset it), only the user's own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 15 * 60


class FailureWindow:
    """At most ``limit`` failures per key within ``window`` seconds."""

    def __init__(
        self,
        limit: int,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        times = self._recent(key)
        if len(times) < self.limit:
            return 0.0
        return max(1.0, times[0] + self.window - self._clock())

    def fail(self, key: str) -> None:
        if len(self._failures) > 100_000:  # bound memory under a spray of keys
            self._failures.clear()
        self._failures.setdefault(key, deque()).append(self._clock())

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class LoginLimiter:
    def __init__(
        self, per_user: int, per_address: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.users = FailureWindow(per_user, clock=clock)
        self.addresses = FailureWindow(per_address, clock=clock)

    def retry_after(self, user: str, address: str) -> float:
        return max(self.users.retry_after(user.lower()), self.addresses.retry_after(address))

    def failed(self, user: str, address: str) -> None:
        self.users.fail(user.lower())
        self.addresses.fail(address)

    def succeeded(self, user: str) -> None:
        self.users.clear(user.lower())
