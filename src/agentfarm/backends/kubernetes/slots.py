"""How many pod logs the control plane follows at once (``AGENTFARM_K8S_LOG_STREAMS``).

Each followed log is an HTTP/1.1 connection to the API server and a stream the API server
proxies from a kubelet for as long as the agent runs. Past the limit a run waits for a slot;
while some wait, a stream gives its slot up after SHARE_SECONDS (or as soon as it goes quiet)
and queues again, reopened from its last line, so every run is read in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

#: While runs wait for a slot, a stream keeps its own this long at most.
SHARE_SECONDS = 30.0
#: A handle made without a backend (unit tests) follows without a limit.
UNLIMITED = 1 << 30


class LogSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = asyncio.Semaphore(limit)
        self._waiting = 0
        #: Streams open now, and the most open at once (the benchmark reads it).
        self.open = 0
        self.peak = 0

    @property
    def contended(self) -> bool:
        """Some run waits for a slot."""
        return self._waiting > 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self._waiting += 1
        try:
            await self._free.acquire()
        finally:
            self._waiting -= 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            yield
        finally:
            self.open -= 1
            self._free.release()
