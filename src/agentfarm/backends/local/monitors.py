"""Starting run monitors, and a few started ahead of need.

A monitor is a fresh Python process (``python -S -m agentfarm.backends.local.monitor``): its
interpreter and imports take some 40 ms before it reads its spec. A launch that clones
overlaps that with the clone; one whose clone comes from the pool (``clone_pool``) would wait
for it. So the backend keeps ``size`` monitors started and waiting for their spec on stdin
(:class:`MonitorPool`): a launch takes one, and a new one is started in the background.

An idle monitor knows nothing of any run (its environment is the same for all, with no
credentials) until it reads a spec; it then moves into the run's directory and its log. When
the server goes, however it goes, the idle monitor's stdin closes empty and it exits: a
restart leaves none behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import agentfarm
from agentfarm import tasks
from agentfarm.backends.local import cgroups, handover, monitor_spec
from agentfarm.domain import errors

log = logging.getLogger(__name__)

#: Where the monitor imports agentfarm from: the very code this server runs.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(agentfarm.__file__)))
#: A refill waits this long after a launch took a monitor (see ``clone_pool.REFILL_DELAY``).
REFILL_DELAY = 1.0
#: Marks an idle monitor (``monitor_egress.IDLE``: it forks its egress proxy ahead of need).
IDLE = "--idle"
IDLE_NICENESS = 19
#: Only root may give a process its priority back, so only root lowers idle monitors.
LOWER_IDLE = os.geteuid() == 0


async def spawn(run_dir: Path | None) -> asyncio.subprocess.Process:
    """A monitor waiting for its spec: in ``run_dir`` and writing its log there, or, without
    one (an idle monitor), in ``/`` with its log opened once the spec names the run."""
    # The monitor imports the very code this server runs, installed or not (-S: only the
    # standard library and agentfarm, so no site-packages scan on the launch path); it gets no
    # other part of the server's environment (which may hold credentials).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p
    )
    if run_dir is None:
        log_fd = await asyncio.to_thread(os.open, os.devnull, os.O_WRONLY)
    else:
        log_fd = await asyncio.to_thread(
            os.open, run_dir / "monitor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-S", "-m", "agentfarm.backends.local.monitor",
            *([] if run_dir else [IDLE]),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_fd,
            cwd=run_dir or "/", env=env, start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(log_fd)
    if run_dir is None and LOWER_IDLE:
        # Its start must not slow the agents starting meanwhile: it runs at the lowest
        # priority until a launch takes it (see ``MonitorPool.take``).
        with contextlib.suppress(OSError):  # it may have failed already
            os.setpriority(os.PRIO_PROCESS, proc.pid, IDLE_NICENESS)
    return proc


async def hand_spec(proc: asyncio.subprocess.Process, spec: monitor_spec.MonitorSpec) -> None:
    """A gated spec, ahead of the workspace: the monitor readies the agent's start, and starts
    it on :func:`send_spec`'s go (``handover``)."""
    await _write_line(proc, handover.spec_line(spec))


async def _write_line(proc: asyncio.subprocess.Process, line: bytes) -> None:
    """One line ahead of the spec's hand-over; a monitor gone already: ``send_spec`` says so."""
    if proc.stdin is not None:
        proc.stdin.write(line)
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()


async def send_spec(
    proc: asyncio.subprocess.Process, run_dir: Path, spec: monitor_spec.MonitorSpec | None
) -> None:
    """The spec (None: the go for the one :func:`hand_spec` sent) and the monitor's answer:
    raises LaunchError when the agent did not start."""
    out, _ = await proc.communicate(handover.GO if spec is None else handover.spec_line(spec))
    try:
        status = json.loads(out.splitlines()[0])
    except (IndexError, ValueError):
        tail = await asyncio.to_thread(_tail, run_dir / "monitor.log")
        raise errors.LaunchError(f"the run's monitor did not start: {tail}") from None
    if not status.get("ok"):
        raise errors.LaunchError(f"the agent did not start: {status.get('error')}")


async def abandon(proc: asyncio.subprocess.Process) -> None:
    """A monitor that will get no spec: it exits when its stdin closes with no spec (the
    process started is only the launcher it forked away from)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.communicate(b"")  # closes stdin (``communicate()`` alone would leave it open)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:].strip() or "no output"
    except OSError:
        return "no log"


class MonitorPool:
    """Up to ``size`` idle monitors (0: none; every launch starts its own)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[asyncio.subprocess.Process] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._filling = False
        self._started = False
        self._closed = False

    def start(self) -> None:
        """Start the idle monitors. Until then (a backend used without a server), and after
        :meth:`close`, each launch starts its own monitor."""
        self._started = True
        self._refill(delay=0)

    async def take(
        self, run_dir: Path, cgroup: tuple[str, cgroups.Limits] | None = None
    ) -> asyncio.subprocess.Process:
        """An idle monitor if one is ready, else one started now for ``run_dir``; told the
        run's ``cgroup`` (name, limits) at once, ahead of its spec (``handover``)."""
        proc = await self._take(run_dir)
        if cgroup is not None:
            await _write_line(proc, handover.prepare_line(*cgroup))
        return proc

    async def _take(self, run_dir: Path) -> asyncio.subprocess.Process:
        proc = None
        while self._idle and proc is None:
            candidate = self._idle.pop()
            # The process started is gone at once (the monitor forks away from it); the
            # monitor itself holds the pipe to its stdout until it exits.
            if candidate.stdout is not None and not candidate.stdout.at_eof():
                proc = candidate
            else:
                await abandon(candidate)
        if proc is not None and LOWER_IDLE:
            # The monitor is in the group its launcher led (it makes its own session once it
            # has its spec): back to the normal priority, whether it is still starting or not.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PGRP, proc.pid, 0)
        self._refill(delay=REFILL_DELAY)
        return proc if proc is not None else await spawn(run_dir)

    async def close(self) -> None:
        """Stop filling; idle monitors get an empty stdin and exit."""
        self._closed = True
        await tasks.stop(list(self._tasks))
        idle, self._idle = self._idle, []
        for proc in idle:
            with contextlib.suppress(ProcessLookupError):
                try:
                    await asyncio.wait_for(proc.communicate(b""), 5)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    def _refill(self, *, delay: float) -> None:
        if self.size <= 0 or self._filling or not self._started or self._closed:
            return
        self._filling = True
        tasks.spawn(self._fill(delay), name="monitor-pool", into=self._tasks)

    async def _fill(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            while len(self._idle) < self.size and not self._closed:
                proc = await spawn(None)
                self._idle.append(proc)
        finally:
            self._filling = False
