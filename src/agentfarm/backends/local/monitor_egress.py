"""A run monitor's egress proxy (``network: allowlist``): a forked child (see ``egress.py``)
that takes the sandbox's connections through the run's egress socket (bridge) or through a
listener the launcher child makes in the sandbox's namespace (netns), and reports each denial
as one JSON line on a pipe, which the monitor spools as an ``egress`` frame.

An idle monitor forks its proxy while it waits for its spec (:func:`prepare`): the proxy's
imports and warm-up then cost the launch nothing. A run without ``allowlist`` lets it go, as
does a monitor that gets no run (:func:`discard`); a monitor started for its run forks one
at launch, which then waits for the same handover.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket

from agentfarm.backends.local import (
    egress,
    lines,
    monitor_control,
    monitor_spec,
    priority,
    procs,
)
from agentfarm.backends.local.frames import SpoolWriter

READ_SIZE = 1 << 16
#: Key data of the denial pipe on the monitor's selector.
DENIALS = "egress"
#: The idle monitor's argument (``monitors.IDLE``): it forks its proxy ahead of need.
IDLE = "--idle"
#: How long a monitor that got no run waits for its proxy to see that and exit.
DISCARD_WAIT = 2.0
#: A proxy waiting for its run: its pid and the monitor's end of its socket pair.
Waiting = tuple[int, socket.socket]


def prepare(argv: list[str]) -> Waiting | None:
    """An idle monitor's proxy, forked now; a monitor started for its run forks at launch."""
    return egress.fork_proxy() if IDLE in argv else None


def discard(waiting: Waiting | None) -> None:
    """End a waiting proxy no run took: it exits when its pair closes (a moment to finish its
    imports if it had just started, then killed); reaped here, so no zombie is left."""
    if waiting is None:
        return
    pid, channel = waiting
    channel.close()
    with contextlib.suppress(OSError):
        pidfd = os.pidfd_open(pid)
        try:
            select.select([pidfd], [], [], DISCARD_WAIT)
        finally:
            os.close(pidfd)
    _reap(pid)


def _reap(pid: int) -> None:
    procs.kill_quietly(pid)  # gone already: ours and not reaped, so the pid is still ours
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class EgressProxy:
    def __init__(
        self,
        spec: monitor_spec.MonitorSpec,
        sel: selectors.BaseSelector,
        dirfd: int,
        spool: SpoolWriter,
        waiting: Waiting | None = None,
    ) -> None:
        self.spec = spec
        self.sel = sel
        self.dirfd = dirfd
        self.spool = spool
        self.pid: int | None = None
        #: The monitor's end of the proxy's socket pair: the handover goes down it, and in
        #: netns mode the launcher child sends the listener down it too
        #: (``egress.private_network``); closed once the agent is spawned.
        self.channel: socket.socket | None = None
        if waiting is not None:
            self.pid, self.channel = waiting
        #: A waiting proxy this run did not need, reaped once the agent is spawned.
        self.released: int | None = None
        self.report_fd: int | None = None
        self.denials = lines.LineSplitter(limit=4096)

    def start(self) -> None:
        """Hand the waiting proxy (forked now if there is none) its run; without
        ``allowlist``, kill it (it holds nothing yet; an interpreter's orderly exit would take
        CPU from the agent starting beside it)."""
        if not self.spec.allowlist:
            self.released, self.pid = self.pid, None
            if self.released is not None:
                procs.kill_quietly(self.released)
            self.close_channel()
            return
        if self.pid is None:
            self.pid, self.channel = egress.fork_proxy()
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        listener: socket.socket | None = None
        try:
            if not self.spec.via_netns:
                listener = self._listen()
            try:
                self._hand_over(report_w, listener)
            except OSError:  # it died while it waited (its pair is closed): a new one
                self.close_channel()
                _reap(self.pid)
                self.pid, self.channel = egress.fork_proxy()
                self._hand_over(report_w, listener)
        finally:
            if listener is not None:
                listener.close()
            os.close(report_w)
        if not self.spec.via_netns:
            self.close_channel()  # the launcher child must not make a namespace
        # It was forked before the spec (at an idle monitor's priority, then the server's):
        # now the run's, as the monitor's own (``priority.lower_priority``).
        with contextlib.suppress(OSError):
            nice = priority.niceness(self.spec.limits.cpu_weight)
            os.setpriority(os.PRIO_PROCESS, self.pid, nice)
        os.set_blocking(report_r, False)
        self.sel.register(report_r, selectors.EVENT_READ, (DENIALS, None))
        self.report_fd = report_r

    def _hand_over(self, report_w: int, listener: socket.socket | None) -> None:
        if self.channel is None:
            raise RuntimeError("the egress proxy has no channel")
        policy = self.spec.egress_policy or {}
        egress.hand_over(self.channel, policy, report_w, 2, listener)

    def _listen(self) -> socket.socket:
        listener, path = monitor_control.bind_private(self.dirfd, egress.SOCKET_NAME)
        if self.spec.uid is not None:
            # Only the run's sandbox uid may connect (0600, and no other sandbox sees it).
            os.chown(path, self.spec.uid, self.spec.gid if self.spec.gid is not None else -1)
        listener.listen(128)
        return listener

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def after_spawn(self) -> None:
        """The agent is spawned (or failed to be): the launcher child has sent the netns
        listener if it was to, and a proxy this run let go has had time to exit."""
        self.close_channel()
        if self.released is not None:
            _reap(self.released)
            self.released = None

    def read_denials(self) -> None:
        fd = self.report_fd
        if fd is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            self.report_fd = None
            if self.pid is not None:
                self.spool.notice("the egress proxy stopped: the agent has no network now")
            return
        for line in self.denials.feed(data):
            self.spool.write("egress", line)

    def stop(self) -> None:
        """Stop the proxy, then spool the denials of the agent's last moments still in the
        pipe (the proxy is gone, so this reads to the end)."""
        if self.pid is not None:
            procs.kill_quietly(self.pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None
        for _ in range(1000):  # bounded: a pipe that is somehow still open must not hang us
            if self.report_fd is None:
                break
            self.read_denials()

    def close(self) -> None:
        self.stop()
        self.after_spawn()
