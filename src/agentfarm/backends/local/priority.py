"""How much a run's monitor (and so its agent) yields the CPU to the control plane: the nice
value matching the runs' cgroup weight (``AGENTFARM_LOCAL_AGENT_CPU_WEIGHT``), for processes
that share the control plane's group, and their session's autogroup."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from agentfarm.backends.local.cgroups import DEFAULT_WEIGHT

#: How much the scheduler's weight falls per nice step (the kernel's table: about 1.25).
NICE_STEP = 1.25


def niceness(weight: int | None) -> int:
    """The nice value that lowers a process about as much as ``weight`` does a group: for a
    process that shares the control plane's group (a monitor; an agent where no cgroup could
    be made). 100 or more: 0; 25: 6; 1: 19."""
    if weight is None or weight >= DEFAULT_WEIGHT:
        return 0
    return min(19, round(math.log(DEFAULT_WEIGHT / max(1, weight)) / math.log(NICE_STEP)))


def lower_priority(weight: int | None) -> None:
    """Give the calling process (a monitor, in its new session) the nice value for
    ``weight``, and its session's autogroup too: where the scheduler groups processes by
    session (``kernel.sched_autogroup_enabled``, processes in the root cgroup), a session's
    nice value is what weighs against the control plane's session, not its processes'."""
    nice = niceness(weight)
    if nice <= 0:
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    with contextlib.suppress(OSError):  # no autogroups (or not ours to change): nothing to do
        Path("/proc/self/autogroup").write_text(str(nice))
