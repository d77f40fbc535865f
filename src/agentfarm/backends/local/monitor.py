"""The per-run monitor's loop: ``python -m agentfarm.backends.local.monitor``.

One small process per running agent, detached from the control plane (its own session,
reparented to init by a double fork), so it outlives a server restart or ``kill -9``. It reads
its spec (``monitor_spec``, credentials included) as JSON on stdin, starts the agent
(``monitor_launch``), and then, in one synchronous ``selectors`` loop: spools the agent's
stdout and stderr lines as frames (``spool.py``); feeds its stdin (``monitor_stdin``: the
prompt, follow-ups, interrupts, closing it once the agent has answered); answers
``control.sock`` (``monitor_control``); runs the egress proxy with ``network: allowlist``
(forked ahead of need by an idle monitor) and spools its denials (``monitor_egress``);
watches the OOM counter; and on exit writes the exit frame, fsyncs and leaves.

Single-threaded on purpose: the launcher child runs Python code between fork and exec (joining
cgroups, staging mounts), which is only safe without threads. The start is reported to the
launching process as one JSON line on stdout: ``{"ok": true, "pid": ...}`` or ``{"ok": false,
"error": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

# Only light modules: the monitor starts on every launch (pydantic would add ~100 ms).
from agentfarm.backends.local import (
    cgroups,
    frames,
    handover,
    lines,
    monitor_control,
    monitor_egress,
    monitor_launch,
    monitor_spec,
    monitor_stdin,
    priority,
    procs,
)
from agentfarm.backends.local.frames import SpoolWriter
from agentfarm.backends.local.handover import Early
from agentfarm.backends.local.monitor_egress import Waiting

READ_SIZE = 1 << 16
#: How often the OOM counter is read where the kernel does not tell (cgroup v2), and for a
#: moment after it told (the kill is counted just after the notification).
OOM_POLL = 0.2
#: Where the kernel tells (cgroup v1's eventfd): a look now and then all the same.
OOM_SAFETY_POLL = 5.0
#: After the agent exits, how long its stdout may stay open (a daemonized grandchild).
DRAIN_TIMEOUT = 2.0


class Monitor:
    def __init__(
        self,
        spec: monitor_spec.MonitorSpec,
        proxy: Waiting | None = None,
        early: Early | None = None,
    ) -> None:
        self.spec, self.early = spec, early
        self.dirfd = os.open(spec.run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        spool_fd = os.open(
            monitor_spec.SPOOL,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o600,
            dir_fd=self.dirfd,
        )
        self.spool = SpoolWriter(spool_fd)
        self.sel = selectors.DefaultSelector()
        self.proc: subprocess.Popen[bytes] | None = None
        self.child_pid: int | None = None
        self.stdin = monitor_stdin.Stdin(self.sel, spec.launch.command, self.spool.notice)
        self.stopped = False
        self.kill_at: float | None = None
        self.oom = False
        self.oom_fd: int | None = None
        #: Until when the OOM counter is read every OOM_POLL (always, without a notifier).
        self.oom_watch_until = 0.0
        #: The process limit refused a fork (said once, in a notice).
        self.forks_refused = False
        #: The spool's disk filled up: the agent was stopped, its output having nowhere to go.
        self.disk_full = False
        self.cgroup = cgroups.RunCgroup()
        self.open_streams = 0
        self.splitters = {"stdout": lines.LineSplitter(), "stderr": lines.LineSplitter()}
        self.control = monitor_control.ControlSocket(self.sel, self.dirfd, self)
        self.status_buffer = b""
        self.proxy = monitor_egress.EgressProxy(spec, self.sel, self.dirfd, self.spool, proxy)

    # --- start -----------------------------------------------------------------------------
    def write_identity(self) -> None:
        pid = os.getpid()
        monitor_spec.write_json(
            self.dirfd, monitor_spec.MONITOR_JSON, {"pid": pid, "start_time": procs.start_time(pid)}
        )

    def write_sandbox_identity(self) -> None:
        pids = [p for p in (self.proc.pid if self.proc else None, self.child_pid) if p]
        body = [{"pid": p, "start_time": procs.start_time(p)} for p in pids]
        monitor_spec.write_json(self.dirfd, monitor_spec.SANDBOX_JSON, {"processes": body})

    def start(self, gate: tuple[int, bytes] | None = None) -> None:
        """Start the agent; with a ``gate`` (the monitor's stdin and what was read of it past
        the spec) its launcher child waits there for the go (``handover``)."""
        spec = self.spec
        self.cgroup = handover.cgroup_for(self.early, spec.cgroup_name, spec.limits)
        self.oom_fd = self.cgroup.oom_notifier()
        if self.oom_fd is not None:
            self.sel.register(self.oom_fd, selectors.EVENT_READ, ("oom", None))
        for notice in self.cgroup.notices:
            self.spool.notice(notice)
        if spec.mode == "none":
            self.spool.notice(
                "the agent runs unsandboxed (sandbox.mode is none): it can read and write "
                "whatever its uid can, and it has the host's network whatever sandbox.network "
                "says"
            )
        self.proxy.start()
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.proc = monitor_launch.spawn(spec, status_w, self.cgroup, self.proxy.channel, gate)
            # Below the control plane from now on, as the agent is (``priority``).
            priority.lower_priority(spec.limits.cpu_weight)
        finally:
            os.close(status_w)
            if gate is not None:
                os.close(gate[0])
            self.proxy.after_spawn()
        proc = self.proc
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
                self.sel.register(stream, selectors.EVENT_READ, (name, None))
                self.open_streams += 1
        if spec.mode != "none":
            self.wait_for_sandbox(status_r)
        self.write_sandbox_identity()
        os.set_blocking(status_r, False)
        self.sel.register(status_r, selectors.EVENT_READ, ("status", None))
        self.pidfd = os.pidfd_open(proc.pid)
        self.sel.register(self.pidfd, selectors.EVENT_READ, ("exit", None))
        started = {"pid": proc.pid, "sandbox": spec.mode, "uid": spec.uid or os.getuid()}
        self.spool.write("started", json.dumps(started).encode())
        self.stdin.attach(proc.stdin)

    def wait_for_sandbox(self, status_r: int, timeout: float = 10.0) -> None:
        """Block until bubblewrap reports its child (its set-up, --die-with-parent included, is
        done), so that a monitor killed right after launch cannot leave a sandbox behind."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(status_r, selectors.EVENT_READ)
            while self.child_pid is None and b"\n" not in self.status_buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return
                data = os.read(status_r, 4096)
                if not data:
                    return  # bubblewrap failed; its stderr and exit status tell why
                self.accept_status(data)

    # --- loop ------------------------------------------------------------------------------
    def run(self) -> bytes:
        proc = self.proc
        if proc is None:
            raise RuntimeError("start() first")
        next_oom = time.monotonic()
        returncode: int | None = None
        drain_until: float | None = None
        while True:
            now = time.monotonic()
            if returncode is not None and (self.open_streams == 0 or now >= (drain_until or 0)):
                break
            if now >= next_oom:
                told = self.oom_fd is not None and now >= self.oom_watch_until
                next_oom = now + (OOM_SAFETY_POLL if told else OOM_POLL)
                if not self.oom and self.cgroup.oom_kills() > 0:
                    self.oom = True
                    self.spool.notice("the agent ran out of memory: stopping the sandbox")
                    self.kill_all()
                self.check_forks()
            if self.kill_at is not None and now >= self.kill_at:
                self.kill_at = None
                self.kill_all()
            deadlines = [next_oom]
            if (close_at := self.stdin.tick()) is not None:
                deadlines.append(close_at)
            if self.kill_at is not None:
                deadlines.append(self.kill_at)
            if drain_until is not None:
                deadlines.append(drain_until)
            timeout = max(0.0, min(deadlines) - now)
            for key, events in self.sel.select(timeout):
                kind, data = key.data
                if kind in ("stdout", "stderr"):
                    self.read_stream(kind, key.fileobj)
                elif kind == "stdin":
                    self.stdin.write()
                elif kind == "status":
                    self.read_status(key.fd)
                elif kind == monitor_egress.DENIALS:
                    self.proxy.read_denials()
                elif kind in (monitor_control.LISTEN, monitor_control.CONN):
                    self.control.on_ready(kind, key.fileobj, data)
                elif kind == "oom" and self.oom_fd is not None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.oom_fd, 8)
                    next_oom, self.oom_watch_until = now, now + 2.0
                elif kind == "exit":
                    self.sel.unregister(self.pidfd)
                    os.close(self.pidfd)
                    returncode = proc.wait()
                    drain_until = time.monotonic() + DRAIN_TIMEOUT
                del events
        if self.cgroup.oom_kills() > 0:
            self.oom = True
        self.check_forks()  # read every few seconds only where the kernel tells of OOMs
        return self.finish(returncode)

    def check_forks(self) -> None:
        if not self.forks_refused and self.cgroup.forks_refused() > 0:
            self.forks_refused = True
            self.spool.notice(
                f"the agent reached its process limit ({self.spec.limits.pids}): its "
                "new processes are refused until some exit; raise backend.sandbox.pids "
                "if it needs more"
            )

    def finish(self, returncode: int | None) -> bytes:
        """Flush, tear down, and return the exit frame's payload."""
        for name in ("stdout", "stderr"):
            for line in self.splitters[name].flush():
                self.spool.write(name, line)
        self.kill_all()
        self.proxy.stop()
        self.cgroup.destroy()
        signal_number = -returncode if returncode is not None and returncode < 0 else None
        error = frames.DISK_FULL if self.disk_full else None
        if self.oom:
            error = f"the agent ran out of memory (limit {self.spec.limits.memory_mb} MiB)"
        return frames.exit_payload(
            returncode if signal_number is None else None,
            signal=signal_number,
            stopped=self.stopped,
            oom_killed=self.oom,
            error=error,
        )

    # --- agent streams ---------------------------------------------------------------------
    def read_stream(self, name: str, stream: Any) -> None:
        try:
            data = os.read(stream.fileno(), READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.sel.unregister(stream)
            stream.close()
            self.open_streams -= 1
            return
        for line in self.splitters[name].feed(data):
            self.spool.write(name, line)  # type: ignore[arg-type]
            if name == "stdout":
                self.stdin.on_stdout(line)
        if self.spool.full and not self.disk_full:
            self.disk_full = True
            self.kill_all()

    def read_status(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            return
        self.accept_status(data)

    def accept_status(self, data: bytes) -> None:
        self.status_buffer += data
        if self.child_pid is None and b"\n" in self.status_buffer:
            first = self.status_buffer.split(b"\n", 1)[0]
            with contextlib.suppress(ValueError, AttributeError):
                pid = int(json.loads(first)["child-pid"])
                # Trust it only if it is bubblewrap's own child: signals go to its children.
                if self.proc is not None and procs.parent_pid(pid) == self.proc.pid:
                    self.child_pid = pid

    # --- stopping --------------------------------------------------------------------------
    def terminate(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if self.spec.mode == "none":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            return
        # bubblewrap does not forward SIGTERM and the namespace's init ignores it: signal the
        # agent's processes, the children of bubblewrap's child.
        targets = procs.children(self.child_pid) if self.child_pid else [proc.pid]
        for pid in targets:
            procs.kill_quietly(pid, signal.SIGTERM)

    def kill_all(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if self.spec.mode == "none" and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            procs.kill_quietly(proc.pid)
        for pid in self.cgroup.pids():
            procs.kill_quietly(pid)

    def accept_input(self, data: bytes) -> str | None:
        return self.stdin.accept(data)

    def interrupt_turn(self) -> str | None:
        return self.stdin.interrupt()

    def request_stop(self, grace: float, interrupt: bytes | None) -> None:
        """Interrupt (the run's command says how, unless the request does), SIGTERM, and kill
        everything after ``grace`` seconds."""
        self.stopped = True
        self.stdin.write_on_stop(interrupt)
        self.terminate()
        deadline = time.monotonic() + max(0.0, grace)
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)

    def forget(self) -> None:
        """The launch was called off before the agent started: no spool, no groups."""
        with contextlib.suppress(OSError):
            os.unlink(monitor_spec.SPOOL, dir_fd=self.dirfd)
        self.cgroup.destroy(timeout=1.0)
        self.close()

    def close(self) -> None:
        self.control.close()  # first: the proxy's end may take a moment, and nobody answers
        self.proxy.close()
        self.sel.close()
        os.close(self.spool.fd)
        os.close(self.dirfd)


def main() -> int:
    # Double fork: the launcher reaps the intermediate at once and the monitor is reparented
    # to init, so no server (dead or restarted) has to wait for it. Before the spec arrives,
    # so that the fork is not on the launch's path.
    if os.fork() > 0:
        os._exit(0)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # The server's ``kill -9`` or Ctrl-C aimed at its group must not reach us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    proxy = monitor_egress.prepare(sys.argv[1:])
    received = handover.read(0)
    if not received.spec:
        if received.early is not None:
            received.early.release()
        monitor_egress.discard(proxy)
        return 0  # an idle monitor (``monitors.MonitorPool``) that no run took
    # Its own session only now: until then the server may reach it through the process
    # group it was started in (``monitors.MonitorPool.take`` gives an idle one its priority
    # back that way).
    os.setsid()
    spec = monitor_spec.MonitorSpec.from_json(json.loads(received.spec))  # freed at once
    try:
        monitor = Monitor(spec, proxy, received.early)
        handover.settle(monitor.dirfd)
    except OSError as exc:
        monitor_egress.discard(proxy)
        handover.report({"ok": False, "error": f"cannot open the run directory: {exc}"})
        return 1
    try:
        monitor.write_identity()
        monitor.control.open()
        monitor.start((os.dup(0), received.rest) if spec.gated else None)
    except handover.NotLaunched:
        monitor.forget()
        return 0
    except Exception as exc:  # every failure is reported; the run must not hang in starting
        message = str(exc) or type(exc).__name__
        monitor.spool.write_exit(frames.exit_payload(None, error=message))
        monitor.spool.sync()
        monitor.close()
        handover.report({"ok": False, "error": message})
        return 1
    handover.report({"ok": True, "pid": os.getpid()})
    monitor.spool.write_exit(monitor.run())
    monitor.spool.sync()
    monitor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
