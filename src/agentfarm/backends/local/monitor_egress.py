"""A run monitor's egress proxy (``network: allowlist``): a forked child (see ``egress.py``)
that takes the sandbox's connections through the run's egress socket (bridge) or through a
listener the launcher child makes in the sandbox's namespace (netns), and reports each denial
as one JSON line on a pipe, which the monitor spools as an ``egress`` frame."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket

from agentfarm.backends.local import egress, lines, monitor_control, monitor_spec, procs
from agentfarm.backends.local.frames import SpoolWriter

READ_SIZE = 1 << 16
#: Key data of the denial pipe on the monitor's selector.
DENIALS = "egress"


class EgressProxy:
    def __init__(
        self,
        spec: monitor_spec.MonitorSpec,
        sel: selectors.BaseSelector,
        dirfd: int,
        spool: SpoolWriter,
    ) -> None:
        self.spec = spec
        self.sel = sel
        self.dirfd = dirfd
        self.spool = spool
        self.pid: int | None = None
        #: The monitor's end of the socket pair that carries the netns listener to the proxy;
        #: the launcher child takes it (``egress.private_network``), then it is closed here.
        self.channel: socket.socket | None = None
        self.report_fd: int | None = None
        self.denials = lines.LineSplitter(limit=4096)

    def start(self) -> None:
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        listener: socket.socket | None = None
        theirs: socket.socket | None = None
        try:
            if self.spec.via_netns:
                self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            else:
                listener = self._listen()
            policy = self.spec.egress_policy or {}
            self.pid = egress.fork_proxy(listener, policy, report_w, theirs)
        finally:
            for sock in (listener, theirs):
                if sock is not None:
                    sock.close()
            os.close(report_w)
        os.set_blocking(report_r, False)
        self.sel.register(report_r, selectors.EVENT_READ, (DENIALS, None))
        self.report_fd = report_r

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
        self.close_channel()
