"""One read of an agent container's log for its handle (handle.py keeps the cursor).

A followed read holds one of the backend's log slots (``slots.py``) and ends with
:class:`Quiet` when it brings nothing for a while (the kubelet may be following a file it has
rotated away, and only a new read sees the new file) or when it has had its slot
SHARE_SECONDS while other runs wait for one; the handle then reads again from shortly before
its last line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.backends.kubernetes import manifests
from agentfarm.backends.kubernetes import slots as k8s_slots

#: A followed log that brings nothing for this long is reopened. The kubelet rotates a
#: container's log (checking every 10 s); a follow that began before the rotation may keep
#: reading the old file (Kubernetes 1.20 does), and what is in neither is lost. A rotation
#: needs lines: while reopened reads bring none, the pause doubles up to QUIET_MAX_SECONDS.
QUIET_REOPEN_SECONDS = 5.0
QUIET_MAX_SECONDS = 60.0
#: The wait for a read's first line includes opening it (API server, kubelet): a loaded
#: machine may take seconds, and a read given up while it connects can leave its socket behind.
#: A reopened read starts before the last line seen, so its first line comes at once anyway.
FIRST_LINE_SECONDS = 30.0


class Quiet(Exception):
    """A followed log brought nothing for a while, or gives its slot up (``shared``)."""

    def __init__(self, *, shared: bool = False) -> None:
        super().__init__("shared" if shared else "quiet")
        self.shared = shared


class QuietTimer:
    """How long a followed log may bring nothing before it is reopened: QUIET_REOPEN_SECONDS
    after a new line, doubling while reopened reads bring none."""

    def __init__(self) -> None:
        self.seconds = QUIET_REOPEN_SECONDS

    def news(self) -> None:
        self.seconds = QUIET_REOPEN_SECONDS

    def nothing_new(self) -> None:
        self.seconds = min(QUIET_MAX_SECONDS, self.seconds * 2)


async def lines(
    api: k8s_api.Api,
    namespace: str,
    name: str,
    log_slots: k8s_slots.LogSlots,
    *,
    follow: bool,
    since: int | None,
    quiet: QuietTimer,
) -> AsyncGenerator[bytes, None]:
    """The agent container's log lines (from ``since`` seconds ago), followed or not."""
    async with log_slots.slot() if follow else contextlib.nullcontext():
        loop = asyncio.get_running_loop()
        opened = loop.time()
        stream = api.pod_log(
            namespace, name, manifests.AGENT_CONTAINER, follow=follow, since_seconds=since
        )
        first = True
        try:
            while True:
                if (
                    follow
                    and log_slots.contended
                    and loop.time() - opened >= k8s_slots.SHARE_SECONDS
                ):
                    raise Quiet(shared=True)
                wait = max(quiet.seconds, FIRST_LINE_SECONDS) if first else quiet.seconds
                try:
                    async with asyncio.timeout(wait if follow else None):
                        line = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise Quiet from None
                first = False
                yield line
        finally:
            await stream.aclose()
