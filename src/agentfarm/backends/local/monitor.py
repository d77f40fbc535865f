"""The per-run monitor: ``python -m agentfarm.backends.local.monitor``.

One small process per running agent, detached from the control plane (its own session,
reparented to init by a double fork), so it outlives a server restart or ``kill -9``. It
reads its spec, secrets included, as JSON on stdin (never from disk or argv), starts the
agent, and then:

- writes the agent's stdout and stderr lines to ``spool`` as frames (see ``spool.py``);
- feeds the agent's stdin, closing it after a stdout line whose ``type`` says the agent is
  done (``close_stdin_after``);
- answers JSON-line requests on ``control.sock`` (``send``, ``stop``, ``ping``);
- watches the run's OOM counter, and on exit writes the exit frame, fsyncs and leaves;
- with ``network: allowlist``, runs the run's egress proxy as a child process (see
  ``egress.py``) and spools the denials it reports as ``egress`` frames.

It is deliberately synchronous and single-threaded (one ``selectors`` loop): the launcher
child runs Python code between fork and exec (joining cgroups, staging mounts), which is only
safe without threads. It reports its start to the launching process as one JSON line on
stdout: ``{"ok": true, "pid": ...}`` or ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# Only light modules: the monitor starts on every launch (pydantic would add ~100 ms).
from agentfarm.backends.local import cgroups, egress, frames, procs, sandbox, stage
from agentfarm.backends.local.frames import MAX_PAYLOAD, SpoolWriter

READ_SIZE = 1 << 16
OOM_POLL = 0.2
#: After the agent exits, how long its stdout may stay open (a daemonized grandchild).
DRAIN_TIMEOUT = 2.0
#: Lines longer than this are not parsed for ``type`` beyond the cheap prefix match.
PARSE_LIMIT = 1 << 20
_TYPE_PREFIX = re.compile(rb'^\{\s*"type"\s*:\s*"([^"\\]{1,64})"')

SPOOL = "spool"
MONITOR_JSON = "monitor.json"
#: The sandbox's processes (bubblewrap and its namespace init) with their start times: if the
#: monitor dies, the control plane kills them (bubblewrap's --die-with-parent does not cover
#: the namespace init once it has changed credentials in its user namespace).
SANDBOX_JSON = "sandbox.json"
CONTROL_SOCK = "control.sock"


def line_type(line: bytes) -> str | None:
    """The top-level ``type`` of a JSON object line, cheaply (None if not one)."""
    if not line.startswith(b"{"):
        return None
    match = _TYPE_PREFIX.match(line[:256])
    if match:
        return match.group(1).decode(errors="replace")
    if len(line) > PARSE_LIMIT:
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


class LineSplitter:
    """Bytes in, whole lines out (without the newline); overlong lines come in pieces."""

    def __init__(self, limit: int = MAX_PAYLOAD) -> None:
        self.buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end < 0:
                break
            lines.append(bytes(self.buffer[start:end]))
            start = end + 1
        del self.buffer[:start]
        while len(self.buffer) >= self.limit:
            lines.append(bytes(self.buffer[: self.limit]))
            del self.buffer[: self.limit]
        return lines

    def flush(self) -> list[bytes]:
        rest = bytes(self.buffer)
        self.buffer.clear()
        return [rest] if rest else []


@dataclass
class Spec:
    run_dir: str
    mode: str
    argv: list[str]
    env: dict[str, str]
    stdin: bytes
    close_stdin_after: tuple[str, ...]
    workspace: str
    home: str
    passwd: str
    group: str
    #: ``none`` (no network at all), ``allowlist`` (only through the egress proxy) or ``open``.
    network: str
    limits: cgroups.Limits
    cgroup_name: str
    uid: int | None = None
    gid: int | None = None
    etc: tuple[str, ...] = ()
    binds: list[sandbox.Bind] = field(default_factory=list)
    bwrap: str = "bwrap"
    setpriv: str = "setpriv"
    usr_links: tuple[str, ...] = ("bin", "lib", "lib64", "sbin")
    #: The egress policy (``Policy.to_json``), for ``network: allowlist``.
    egress_policy: dict[str, Any] | None = None
    #: The interpreter that runs ``bridge.py`` inside the sandbox.
    python: str = "/usr/bin/python3"
    #: How the sandbox's proxy port reaches the proxy: ``netns`` (root only), ``bridge`` or
    #: ``auto`` (``netns`` when the monitor drops to a sandbox uid, that is runs as root).
    egress_via: str = "auto"

    @property
    def allowlist(self) -> bool:
        return self.mode != "none" and self.network == "allowlist"

    @property
    def via_netns(self) -> bool:
        if not self.allowlist:
            return False
        return self.egress_via == "netns" or (self.egress_via == "auto" and self.uid is not None)

    @property
    def via_bridge(self) -> bool:
        return self.allowlist and not self.via_netns

    @property
    def egress_socket(self) -> str:
        return os.path.join(self.run_dir, egress.SOCKET_NAME)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Spec:
        raw = dict(raw)
        raw["stdin"] = base64.b64decode(raw.get("stdin", ""))
        raw["close_stdin_after"] = tuple(raw.get("close_stdin_after", ()))
        raw["limits"] = cgroups.Limits(**raw.get("limits", {}))
        raw["binds"] = [sandbox.Bind(*b) for b in raw.get("binds", [])]
        raw["etc"] = tuple(raw.get("etc", ()))
        raw["usr_links"] = tuple(raw.get("usr_links", ("bin", "lib", "lib64", "sbin")))
        if isinstance(raw.get("network"), bool):
            raw["network"] = "open" if raw["network"] else "none"
        return cls(**raw)


def _staging(spec: Spec) -> tuple[list[str], dict[str, str]]:
    """Sources to stage (when root drops to another uid) and host path -> staged path.

    Unsandboxed runs are not staged (the staging tmpfs would hide the host's /tmp from the
    agent): there the run directory's parents must be traversable by the sandbox uid.
    """
    if spec.uid is None or spec.mode == "none":
        return [], {}
    sources = [spec.workspace, spec.home, spec.passwd, spec.group]
    sources += [b.source for b in spec.binds]
    if spec.via_bridge:
        sources += [spec.egress_socket, egress.BRIDGE]
    unique = list(dict.fromkeys(sources))
    return unique, {src: stage.staged_path(i) for i, src in enumerate(unique)}


def build_launch(
    spec: Spec, status_fd: int
) -> tuple[list[str], str | None, list[str], dict[str, str]]:
    """argv, working directory, the sources to stage and the environment for this spec."""
    sources, staged = _staging(spec)

    def at(path: str) -> str:
        return staged.get(path, path)

    if spec.mode == "none":
        argv = sandbox.setpriv_prefix(spec.uid, spec.gid, spec.setpriv) + spec.argv
        return argv, at(spec.workspace), sources, {**spec.env, "HOME": at(spec.home)}
    binds = list(spec.binds)
    command = spec.argv
    if spec.via_bridge:
        binds += [
            sandbox.Bind(spec.egress_socket, egress.SANDBOX_SOCKET),
            sandbox.Bind(egress.BRIDGE, egress.SANDBOX_BRIDGE),
        ]
        port = str(egress.SANDBOX_PORT)
        bridge = [spec.python, "-S", "-I", egress.SANDBOX_BRIDGE, egress.SANDBOX_SOCKET, port]
        command = [*bridge, "--", *spec.argv]
    config = sandbox.SandboxConfig(
        workspace=at(spec.workspace),
        home=at(spec.home),
        passwd=at(spec.passwd),
        group=at(spec.group),
        # With netns, the launcher child has made the namespace: bubblewrap stays in it.
        network=spec.network == "open" or spec.via_netns,
        etc=spec.etc,
        extra_binds=tuple(sandbox.Bind(at(b.source), b.dest, b.writable) for b in binds),
        status_fd=status_fd,
        uid=spec.uid,
        gid=spec.gid,
        bwrap=spec.bwrap,
        setpriv=spec.setpriv,
        usr_links=spec.usr_links,
    )
    return sandbox.bwrap_argv(config, command), None, sources, spec.env


class Monitor:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.dirfd = os.open(spec.run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        spool_fd = os.open(
            SPOOL, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=self.dirfd
        )
        self.spool = SpoolWriter(spool_fd)
        self.sel = selectors.DefaultSelector()
        self.proc: subprocess.Popen[bytes] | None = None
        self.child_pid: int | None = None
        self.stdin_buffer = bytearray(spec.stdin)
        self.stdin_open = True
        self.stopped = False
        self.kill_at: float | None = None
        self.oom = False
        self.cgroup = cgroups.RunCgroup()
        self.open_streams = 0
        self.splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        self.listener: socket.socket | None = None
        self.status_buffer = b""
        self.proxy_pid: int | None = None
        #: The monitor's end of the socket pair that carries the netns listener to the proxy.
        self.channel: socket.socket | None = None
        self.denials = LineSplitter(limit=4096)
        self.report_fd: int | None = None

    # --- start -----------------------------------------------------------------------------
    def write_identity(self) -> None:
        pid = os.getpid()
        self.write_json(MONITOR_JSON, {"pid": pid, "start_time": procs.start_time(pid)})

    def write_sandbox_identity(self) -> None:
        pids = [p for p in (self.proc.pid if self.proc else None, self.child_pid) if p]
        body = [{"pid": p, "start_time": procs.start_time(p)} for p in pids]
        self.write_json(SANDBOX_JSON, {"processes": body})

    def write_json(self, name: str, value: object) -> None:
        body = json.dumps(value).encode()
        tmp = f"{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=self.dirfd)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)

    def open_control(self) -> None:
        # Through the directory descriptor: a unix socket path is limited to ~108 bytes.
        path = f"/proc/self/fd/{self.dirfd}/{CONTROL_SOCK}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        listener.listen(16)
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, ("listen", None))
        self.listener = listener

    def start(self) -> None:
        spec = self.spec
        self.cgroup = cgroups.create(spec.cgroup_name, spec.limits)
        for notice in self.cgroup.notices:
            self.spool.notice(notice)
        if spec.mode == "none":
            self.spool.notice(
                "the agent runs unsandboxed (sandbox.mode is none): it can read and write "
                "whatever its uid can, and it has the host's network whatever sandbox.network "
                "says"
            )
        if spec.allowlist:
            self.start_proxy()
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        argv, cwd, sources, env = build_launch(spec, status_w)
        stage.load()
        cgroup = self.cgroup
        channel = self.channel

        def preexec() -> None:
            try:
                cgroup.join()
                if sources:
                    stage.stage(sources)
                if channel is not None:
                    egress.private_network(channel)
                if cwd is not None:
                    # Here rather than Popen(cwd=...), which would chdir before we join the cgroups.
                    os.chdir(cwd)
            except BaseException as exc:
                os.write(err_w, f"{type(exc).__name__}: {exc}".encode())
                raise

        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                pass_fds=(status_w,) if spec.mode != "none" else (),
                preexec_fn=preexec,
                start_new_session=spec.mode == "none",
            )
        except (OSError, subprocess.SubprocessError) as exc:
            detail = os.read(err_r, 4096).decode(errors="replace") or str(exc)
            raise RuntimeError(f"cannot start the agent: {detail}") from None
        finally:
            os.close(status_w)
            os.close(err_w)
            os.close(err_r)
            if self.channel is not None:
                self.channel.close()
                self.channel = None
        proc = self.proc
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
                self.sel.register(stream, selectors.EVENT_READ, (name, None))
                self.open_streams += 1
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
        if spec.mode != "none":
            self.wait_for_sandbox(status_r)
        self.write_sandbox_identity()
        os.set_blocking(status_r, False)
        self.sel.register(status_r, selectors.EVENT_READ, ("status", None))
        self.pidfd = os.pidfd_open(proc.pid)
        self.sel.register(self.pidfd, selectors.EVENT_READ, ("exit", None))
        started = {"pid": proc.pid, "sandbox": spec.mode, "uid": spec.uid or os.getuid()}
        self.spool.write("started", json.dumps(started).encode())
        self.update_stdin()

    def start_proxy(self) -> None:
        """Fork the proxy, with the run's egress socket (bridge) or a socket pair over which
        the launcher child sends the listener it makes in the sandbox's namespace (netns)."""
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        listener: socket.socket | None = None
        theirs: socket.socket | None = None
        try:
            if self.spec.via_netns:
                self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            else:
                listener = self.listen_egress_socket()
            policy = self.spec.egress_policy or {}
            self.proxy_pid = egress.fork_proxy(listener, policy, report_w, theirs)
        finally:
            for sock in (listener, theirs):
                if sock is not None:
                    sock.close()
            os.close(report_w)
        os.set_blocking(report_r, False)
        self.sel.register(report_r, selectors.EVENT_READ, ("egress", None))
        self.report_fd = report_r

    def listen_egress_socket(self) -> socket.socket:
        path = f"/proc/self/fd/{self.dirfd}/{egress.SOCKET_NAME}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        if self.spec.uid is not None:
            # Only the run's sandbox uid may connect (0600, and no other sandbox sees it).
            os.chown(path, self.spec.uid, self.spec.gid if self.spec.gid is not None else -1)
        listener.listen(128)
        return listener

    def stop_proxy(self) -> None:
        if self.proxy_pid is None:
            return
        procs.kill_quietly(self.proxy_pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.proxy_pid, 0)
        self.proxy_pid = None

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
                next_oom = now + OOM_POLL
                if not self.oom and self.cgroup.oom_kills() > 0:
                    self.oom = True
                    self.spool.notice("the agent ran out of memory: stopping the sandbox")
                    self.kill_all()
            if self.kill_at is not None and now >= self.kill_at:
                self.kill_at = None
                self.kill_all()
            deadlines = [next_oom]
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
                    self.write_stdin()
                elif kind == "status":
                    self.read_status(key.fd)
                elif kind == "egress":
                    self.read_denials(key.fd)
                elif kind == "listen":
                    self.accept()
                elif kind == "conn":
                    self.read_conn(key.fileobj, data)  # type: ignore[arg-type]
                elif kind == "exit":
                    self.sel.unregister(self.pidfd)
                    os.close(self.pidfd)
                    returncode = proc.wait()
                    drain_until = time.monotonic() + DRAIN_TIMEOUT
                del events
        if self.cgroup.oom_kills() > 0:
            self.oom = True
        return self.finish(returncode)

    def finish(self, returncode: int | None) -> bytes:
        """Flush, tear down, and return the exit frame's payload."""
        for name in ("stdout", "stderr"):
            for line in self.splitters[name].flush():
                self.spool.write(name, line)
        self.kill_all()
        self.stop_proxy()
        # Denials of the agent's last moments may still be in the pipe: the proxy is gone now,
        # so this reads to the end.
        for _ in range(1000):  # bounded: a pipe that is somehow still open must not hang us
            if self.report_fd is None:
                break
            self.read_denials(self.report_fd)
        self.cgroup.destroy()
        signal_number = -returncode if returncode is not None and returncode < 0 else None
        error = None
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
            closing = self.spec.close_stdin_after
            if name == "stdout" and self.stdin_open and closing and line_type(line) in closing:
                self.close_stdin()

    def update_stdin(self) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or not self.stdin_open:
            return
        registered = self._is_registered(proc.stdin)
        if self.stdin_buffer and not registered:
            self.sel.register(proc.stdin, selectors.EVENT_WRITE, ("stdin", None))
        elif not self.stdin_buffer and registered:
            self.sel.unregister(proc.stdin)

    def _is_registered(self, fileobj: Any) -> bool:
        try:
            self.sel.get_key(fileobj)
        except KeyError:
            return False
        return True

    def write_stdin(self) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None:
            return
        try:
            written = os.write(proc.stdin.fileno(), self.stdin_buffer[:READ_SIZE])
        except BlockingIOError:
            return
        except (BrokenPipeError, OSError):
            self.close_stdin()
            return
        del self.stdin_buffer[:written]
        self.update_stdin()

    def close_stdin(self) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or not self.stdin_open:
            return
        if self._is_registered(proc.stdin):
            self.sel.unregister(proc.stdin)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        self.stdin_open = False

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

    def read_denials(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            self.report_fd = None
            if self.proxy_pid is not None:
                self.spool.notice("the egress proxy stopped: the agent has no network now")
            return
        for line in self.denials.feed(data):
            self.spool.write("egress", line)

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

    def request_stop(self, grace: float, interrupt: bytes) -> None:
        self.stopped = True
        if interrupt and self.stdin_open:
            self.stdin_buffer += interrupt
            self.update_stdin()
        self.terminate()
        deadline = time.monotonic() + max(0.0, grace)
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)

    # --- control socket --------------------------------------------------------------------
    def accept(self) -> None:
        if self.listener is None:
            return
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, ("conn", bytearray()))

    def read_conn(self, conn: socket.socket, buffer: bytearray) -> None:
        try:
            data = conn.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(conn)
            conn.close()
            return
        buffer += data
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            reply = self.handle(line)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "bad request"}
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "child_pid": self.child_pid}
        if op == "send":
            if not self.stdin_open:
                return {"ok": False, "error": "the agent's stdin is closed"}
            self.stdin_buffer += base64.b64decode(request.get("data", ""))
            self.update_stdin()
            return {"ok": True}
        if op == "stop":
            interrupt = base64.b64decode(request.get("interrupt", ""))
            self.request_stop(float(request.get("grace", 10.0)), interrupt)
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def close(self) -> None:
        self.stop_proxy()
        if self.channel is not None:
            self.channel.close()
        with contextlib.suppress(OSError):
            os.unlink(CONTROL_SOCK, dir_fd=self.dirfd)
        if self.listener is not None:
            self.listener.close()
        self.sel.close()
        os.close(self.spool.fd)
        os.close(self.dirfd)


def _report(message: dict[str, Any]) -> None:
    """Tell the launching process how the start went, then let go of its pipe."""
    with contextlib.suppress(OSError):
        os.write(1, json.dumps(message).encode() + b"\n")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)


def main() -> int:
    raw = json.loads(sys.stdin.buffer.read())
    # Double fork: the launcher reaps the intermediate at once and the monitor is reparented
    # to init, so no server (dead or restarted) has to wait for it.
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # The server's ``kill -9`` or Ctrl-C aimed at its group must not reach us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    spec = Spec.from_json(raw)
    del raw
    try:
        monitor = Monitor(spec)
    except OSError as exc:
        _report({"ok": False, "error": f"cannot open the run directory: {exc}"})
        return 1
    try:
        monitor.write_identity()
        monitor.open_control()
        monitor.start()
    except Exception as exc:  # every failure is reported; the run must not hang in starting
        message = str(exc) or type(exc).__name__
        monitor.spool.write("exit", frames.exit_payload(None, error=message))
        monitor.spool.sync()
        monitor.close()
        _report({"ok": False, "error": message})
        return 1
    _report({"ok": True, "pid": os.getpid()})
    monitor.spool.write("exit", monitor.run())
    monitor.spool.sync()
    monitor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
