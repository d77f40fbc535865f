#!/usr/bin/env python3
"""Entrypoint of the agentfarm agent image (standard library only).

    entrypoint.py clone            clone AGENTFARM_REPO into the workspace on a new branch
                                   AGENTFARM_BRANCH (or, when it is also AGENTFARM_BASE_BRANCH,
                                   on that existing branch): pods of older control planes ran
                                   it as an init container
    entrypoint.py run -- ARGV...   agent container: with AGENTFARM_CLONE=1 clone first (as
                                   ``clone``), then run ARGV with the first stdin bytes from
                                   AGENTFARM_STDIN, relay its output, then push the branch
    entrypoint.py control          in the agent container (``exec``, by the control plane):
                                   one JSON request line on stdin for the running ``run``
                                   (a follow-up, an interrupt), its JSON reply on stdout
    entrypoint.py session-out      in the agent container (``exec``, at the run's end): the
                                   agent's session files from HOME as a bundle on stdout
    entrypoint.py session-in       (``exec``, in a continued run's new pod): such a bundle on
                                   stdin, put back into HOME; its JSON reply on stdout

The control plane reads this container's log, which merges stdout and stderr, so everything
goes to stdout, one line per write, each line ``\\x1e<kind><seq> <payload>``: kind ``O`` for
the agent's stdout, ``E`` for its stderr, ``N`` for this script's notices, and ``seq`` counting
the lines from 1. The sequence number is the control plane's cursor: the kubelet rotates
container logs, so a line's position in the log it can still read says nothing.

Cloning in the agent container rather than in an init container saves a container start: the
kubelet sees an init container end only at its next relist (about a second). A failed clone ends
``run`` with exit code 1 after the notice ``agentfarm.clone-failed {"error": "..."}`` (git's
masked words), which the control plane makes the run's error; no agent runs and nothing is
pushed.

Git tokens (AGENTFARM_GIT_CREDENTIALS names the variables) reach git only as an HTTP
Authorization header in GIT_CONFIG_* entries of the environment of the clone and of the push:
never on disk, never in an argv, never in the agent's environment, masked in any message.
The workspace is the agent's, so its .git (config, hooks, fsmonitor, pushurl, insteadOf,
commondir, a symlinked .git) is never trusted with a token: every git command here disables
hooks and fsmonitor, and the branch is pushed from a fresh repository holding a copy of its
commits and no configuration but ours, after every process the agent left was killed.

Follow-ups and interrupts (as the local backend's monitor_stdin does them): ``run`` listens on
a unix socket (AGENTFARM_CONTROL) for ``{"op": "send", "data": <base64>}`` and ``{"op":
"interrupt"}``; the control plane reaches it by exec'ing ``entrypoint.py control`` in the pod
(the exec API carries the request on stdin and the reply on stdout). The agent's stdin stays
open while messages wait (one less at each stdout line whose type is in
AGENTFARM_CLOSE_STDIN_AFTER, or with AGENTFARM_REPLAYS=1 at each echo of a message), then for
AGENTFARM_FOLLOWUP_WINDOW seconds (at least AGENTFARM_INTERRUPTED_WINDOW after an interrupted
turn), announced by an ``agentfarm.waiting {"seconds": N}`` notice, and closes. The socket is
the agent's too (same uid, same /tmp): it can only talk to itself through it.

Resuming in the pod (a park at the model's usage limit, a stall's resume): with
AGENTFARM_RESUME_WAIT > 0, ``run`` does not push and exit when the agent exits. It kills what
the agent left, says ``agentfarm.exited {"code": N}`` and waits up to that many seconds for
``{"op": "resume", "argv": [...], "stdin": <base64>}`` (the next agent process, in the same
workspace and HOME, its lines continuing the same sequence numbers; the reply's ``seq`` is the
last number before them) or ``{"op": "finish"}``; then (or when the wait runs out) it pushes
and exits as without a wait. A signal (the pod's deletion) ends the wait without a push.
``{"op": "stop", "grace": N}`` ends the running agent (SIGTERM, SIGKILL after N s) but not the
pod: a stopped run's branch is still pushed at ``finish``, a stalled one can be resumed.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from typing import IO

KIND_STDOUT = b"O"
KIND_STDERR = b"E"
KIND_NOTICE = b"N"
#: Starts the notice that says where the branch ended up (JSON follows); the control plane's
#: handle (backends/kubernetes/handle.py, BRANCH_NOTICE) reads it.
BRANCH_RECORD = "agentfarm.branch "
#: Starts the notice that says the agent waits for a follow-up (domain/launch.py,
#: WAITING_NOTICE).
WAITING_RECORD = "agentfarm.waiting "
#: Starts the notice that says the agent exited and this script waits for ``resume`` or
#: ``finish`` (JSON ``{"code": N}`` follows); the handle makes it the exit record.
EXITED_RECORD = "agentfarm.exited "
#: Starts the notice that says the clone in ``run`` failed (JSON ``{"error": "..."}``); the
#: handle makes it the run's error (backends/kubernetes/lines.py, CLONE_FAILED_NOTICE).
CLONE_FAILED_RECORD = "agentfarm.clone-failed "
CONTROL_SOCKET = "/tmp/.agentfarm-control.sock"  # noqa: S108 - the pod's private emptyDir
CONTROL_LIMIT = 4 << 20
_out = threading.Lock()
_seq = 0
_secrets: list[str] = []

#: Settings given to every git command on its command line: they outrank any config file.
SAFE_CONFIG = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.alternateRefsCommand", ""),
    ("credential.helper", ""),
    ("protocol.ext.allow", "never"),
    # A rejected push says why, without git's advice on pulling first.
    ("advice.pushUpdateRejected", "false"),
)
#: Said when the server refuses the token git sent (backends/local/git.py says the same).
AUTH_REFUSED = (
    "the server refused the run's git token (its git_token_secret, or the host's GIT_TOKEN_*, "
    "GITHUB_TOKEN or FORGEJO_TOKEN): it is wrong, expired or revoked, or lacks access to the "
    "repository; store a valid one with `agentfarm secret set`"
)


def emit(kind: bytes, data: bytes) -> None:
    global _seq
    with _out:
        _seq += 1
        sys.stdout.buffer.write(b"\x1e%s%d %s\n" % (kind, _seq, data.rstrip(b"\n")))
        sys.stdout.buffer.flush()


def mask(text: str) -> str:
    for value in _secrets:
        text = text.replace(value, "***")
    return text


def notice(text: str) -> None:
    emit(KIND_NOTICE, mask(text).replace("\n", " ").encode())


def token_rules() -> list[dict[str, str]]:
    rules: list[dict[str, str]] = json.loads(os.environ.get("AGENTFARM_GIT_CREDENTIALS") or "[]")
    return rules


def hidden_names() -> set[str]:
    """Variables the agent must not see: the git tokens and their description."""
    names = {"AGENTFARM_GIT_CREDENTIALS", "GITHUB_TOKEN", "GH_TOKEN", "FORGEJO_TOKEN"}
    names |= {rule["env"] for rule in token_rules()}
    return names | {name for name in os.environ if name.startswith("GIT_TOKEN_")}


def _config_env(env: dict[str, str], items: list[tuple[str, str]]) -> dict[str, str]:
    count = int(env.get("GIT_CONFIG_COUNT") or "0")
    for key, value in items:
        env[f"GIT_CONFIG_KEY_{count}"] = key
        env[f"GIT_CONFIG_VALUE_{count}"] = value
        count += 1
    env["GIT_CONFIG_COUNT"] = str(count)
    return env


def plain_env() -> dict[str, str]:
    """The environment for git without any token: no inherited GIT_* settings, no global or
    system config (the agent can write ~/.gitconfig), no prompts."""
    hidden = hidden_names()
    env = {k: v for k, v in os.environ.items() if k not in hidden and not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")
    return trust_workspace(env)


def token_env() -> dict[str, str]:
    """:func:`plain_env` plus the tokens as Authorization headers for their URL prefixes."""
    items: list[tuple[str, str]] = []
    for rule in token_rules():
        token = os.environ.get(rule["env"], "")
        if not token:
            continue
        basic = base64.b64encode(f"{rule['user']}:{token}".encode()).decode()
        _secrets.extend({token, basic})
        items.append((f"http.{rule['url']}.extraHeader", f"Authorization: Basic {basic}"))
    return _config_env(plain_env(), items)


def trust_workspace(env: dict[str, str]) -> dict[str, str]:
    """Add ``safe.directory`` for the workspace: its volume's mount point belongs to root, so
    git (>= 2.35.2) would otherwise refuse a repository there for our uid ("dubious
    ownership"). Environment config counts as command-line config, which git honours."""
    workspace = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    return _config_env(env, [("safe.directory", workspace)])


def safe_argv() -> list[str]:
    argv = ["git"]
    for key, value in SAFE_CONFIG:
        argv += ["-c", f"{key}={value}"]
    return argv


def git(*args: str, env: dict[str, str], cwd: str | None = None, timeout: float = 600) -> str:
    """Run git with the safe settings; raise with git's (masked) message on failure."""
    done = subprocess.run(
        [*safe_argv(), *args],
        cwd=cwd or os.environ.get("AGENTFARM_WORKSPACE", "/workspace"),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        message = mask((done.stderr or done.stdout).strip()) or f"exit code {done.returncode}"
        if "could not read Username" in message and _sends_token(env):
            # The server answered 401 to the token, and git fell back to asking for one.
            message = f"{AUTH_REFUSED} (git: {message})"
        raise RuntimeError(f"git {args[0]}: {message}")
    return done.stdout.strip()


def _sends_token(env: dict[str, str]) -> bool:
    return any(
        key.startswith("GIT_CONFIG_KEY_") and value.endswith(".extraHeader")
        for key, value in env.items()
    )


def _to_stderr(text: str, _failed: bool) -> None:
    print(text, file=sys.stderr)


def clone(say: Callable[[str, bool], None] = _to_stderr) -> int:
    """Clone, saying the outcome in one line with ``say(text, failed)``; 0 or 1."""
    repo = os.environ["AGENTFARM_REPO"]
    base = os.environ.get("AGENTFARM_BASE_BRANCH") or ""
    branch = os.environ["AGENTFARM_BRANCH"]
    workspace = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    env = token_env()
    try:
        # The identity goes into the new repository's config with the clone (two git
        # processes fewer before the agent starts).
        args = ["clone", "--quiet", "--no-tags", "-c", "user.name=agentfarm",
                "-c", "user.email=agentfarm@localhost"]  # fmt: skip
        if base:
            args += ["--branch", base]
        git(*args, "--", repo, workspace, env=env)
        if base != branch:  # else a follow-up: it continues the branch it cloned
            git("checkout", "--quiet", "-b", branch, env=env)
        head = git("rev-parse", "HEAD", env=env)
        git_dir = os.path.join(workspace, ".git")
        with open(os.path.join(git_dir, "agentfarm-base"), "w") as fh:
            fh.write(head + "\n")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        say(mask(str(exc)).replace("\n", " "), True)
        return 1
    say(f"cloned {repo} at {head[:12]} onto branch {branch}", False)
    return 0


def _clone_notice(text: str, failed: bool) -> None:
    notice(CLONE_FAILED_RECORD + json.dumps({"error": text}) if failed else text)


def run(argv: list[str]) -> int:
    if not argv:
        print("usage: entrypoint.py run -- ARGV...", file=sys.stderr)
        return 2
    _make_undumpable()
    stdin_path = os.environ.get("AGENTFARM_STDIN", "")
    first = b""
    if stdin_path and os.path.exists(stdin_path):
        with open(stdin_path, "rb") as fh:
            first = fh.read()
    hidden = hidden_names()
    env = trust_workspace({k: v for k, v in os.environ.items() if k not in hidden})
    shared = os.environ.get("AGENTFARM_SHARED_CLAUDE")
    if shared:
        copy_credentials(shared, os.path.join(env.get("HOME") or "/home/agent", ".claude"))
    wait = float(os.environ.get("AGENTFARM_RESUME_WAIT") or 0)
    signalled: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    control = Control(procs)

    def forward(signum: int, _frame: object) -> None:
        signalled.append(signum)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    listener = serve_control(control)
    if os.environ.get("AGENTFARM_CLONE") == "1":
        # Before the agent, with the tokens in git's environment only (as in ``clone``).
        notice(f"cloning {os.environ.get('AGENTFARM_REPO', '')}")
        cloned = clone(say=_clone_notice)
        if cloned != 0 or signalled:
            _close_control(listener)
            return 128 + signalled[0] if signalled else cloned
    code = run_agent(argv, first, env, control, procs)
    while wait > 0 and not signalled:
        # The run may go on in this pod (a park, a stall's resume): say the agent exited and
        # wait for the control plane's word, ``resume`` (a new agent process, same workspace
        # and HOME) or ``finish``.
        reap_leftovers()  # nothing the agent left may answer for the control plane
        said = EXITED_RECORD + json.dumps({"code": code})
        request = control.wait_next(wait, signalled, announce=functools.partial(notice, said))
        if request is None:
            if not signalled and not control.finished:
                notice(f"no word from the control plane within {wait:g} s: finishing the run")
            break
        code = run_agent(request.argv, request.stdin, env, control, procs)
    _close_control(listener)
    if not signalled and os.environ.get("AGENTFARM_PUSH") == "1":
        push()
    return code


def _close_control(listener: socket.socket | None) -> None:
    if listener is not None:
        with contextlib.suppress(OSError):
            listener.close()
            os.unlink(control_path())


def run_agent(
    argv: list[str],
    first: bytes,
    env: dict[str, str],
    control: Control,
    procs: list[subprocess.Popen[bytes]],
) -> int:
    """Run the agent once: its stdin fed (and kept open for follow-ups) by an
    :class:`AgentStdin` the control socket reaches, its output relayed; its exit code."""
    workspace = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    close_after = set(json.loads(os.environ.get("AGENTFARM_CLOSE_STDIN_AFTER") or "[]"))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=workspace,
        start_new_session=True,
    )
    procs[:] = [proc]
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    if stdin is None or stdout is None or stderr is None:
        raise RuntimeError("the agent's pipes were not created")
    feeder = AgentStdin(
        stdin,
        close_after,
        first,
        window=float(os.environ.get("AGENTFARM_FOLLOWUP_WINDOW") or 0),
        interrupt=base64.b64decode(os.environ.get("AGENTFARM_INTERRUPT") or ""),
        interrupted_window=float(os.environ.get("AGENTFARM_INTERRUPTED_WINDOW") or 600),
        replays=os.environ.get("AGENTFARM_REPLAYS") == "1",
    )
    control.feeder = feeder
    if control.stop_asked:
        control.stop_asked = False
        control.stop(0)

    def feed() -> None:
        feeder.write(first)
        if not close_after:  # nothing to wait for: the agent has everything it will get
            feeder.close()

    def relay_stderr() -> None:
        for line in stderr:
            emit(KIND_STDERR, line)

    def relay_stdout() -> None:
        for line in stdout:
            emit(KIND_STDOUT, line)
            if close_after:
                feeder.on_stdout(line)

    threads = [threading.Thread(target=feed, daemon=True)]
    threads.append(threading.Thread(target=relay_stderr, daemon=True))
    threads.append(threading.Thread(target=relay_stdout, daemon=True))
    for thread in threads:
        thread.start()
    code = proc.wait()
    control.feeder = None
    feeder.close()
    for thread in threads:
        thread.join(timeout=5)
    if any(thread.is_alive() for thread in threads):
        # A process the agent left behind holds its stdout or stderr open: the run is over
        # all the same (in the pod, where this is PID 1, that process goes now).
        reap_leftovers()
        for thread in threads:
            thread.join(timeout=5)
    return 128 - code if code < 0 else code


class Resume:
    """A ``resume`` request: the next agent process's argv and first stdin bytes."""

    def __init__(self, argv: list[str], stdin: bytes) -> None:
        self.argv = argv
        self.stdin = stdin

    @classmethod
    def parse(cls, request: dict[str, object]) -> Resume | str:
        argv, data = request.get("argv"), request.get("stdin", "")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            return "bad request: argv must be a non-empty list of strings"
        if not isinstance(data, str):
            return "bad request: stdin must be base64 text"
        try:
            stdin = base64.b64decode(data, validate=True)
        except ValueError:
            return "bad request: stdin is not base64"
        return cls(list(argv), stdin)


class Control:
    """What the control socket reaches: the running agent's stdin (follow-ups, interrupts),
    or, between agent processes, the wait for ``resume`` or ``finish``."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs
        self.feeder: AgentStdin | None = None
        self.lock = threading.Lock()
        self.waiting = False
        self.finished = False
        self.next: Resume | None = None
        self.decided = threading.Event()
        #: A stop came before the first agent process started: it ends at once.
        self.stop_asked = False
        #: Set once the reply to a ``resume`` or ``finish`` is on its way.
        self.sent = threading.Event()

    def handle(self, request: object) -> dict[str, object]:
        op = request.get("op") if isinstance(request, dict) else None
        if op in ("resume", "finish") and isinstance(request, dict):
            return self._decide(op, request)
        feeder = self.feeder
        if op == "stop" and isinstance(request, dict):
            grace = request.get("grace")
            with self.lock:
                if feeder is None and not self.waiting:  # the agent is about to start
                    self.stop_asked = True
            self.stop(float(grace) if isinstance(grace, (int, float)) else 10.0)
            return {"ok": True}
        if feeder is None:
            if op == "ping":
                return {"ok": True}
            return {"ok": False, "error": "the agent has exited: it takes no more messages"}
        return feeder.handle(request)

    def stop(self, grace: float) -> None:
        """End the running agent, not the pod (a stop with a resume in mind): SIGTERM to its
        process group, SIGKILL after ``grace`` seconds."""
        procs = list(self.procs)

        def kill(signum: int) -> None:
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signum)

        kill(signal.SIGTERM)
        timer = threading.Timer(max(0.0, min(grace, 300.0)), kill, args=(signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    def _decide(self, op: str, request: dict[str, object]) -> dict[str, object]:
        parsed = Resume.parse(request) if op == "resume" else None
        if isinstance(parsed, str):
            return {"ok": False, "error": parsed}
        with self.lock:
            if not self.waiting:
                return {"ok": False, "error": f"cannot {op}: the agent is still running"}
            self.waiting = False
            self.next = parsed
            self.finished = parsed is None
            # Nothing is written between agent processes: the next line is ``seq`` + 1.
            with _out:
                seq = _seq
            self.sent.clear()
            self.decided.set()
        return {"ok": True, "seq": seq}

    def wait_next(
        self, seconds: float, signalled: list[int], announce: Callable[[], None]
    ) -> Resume | None:
        """``announce`` the wait, then wait (at most ``seconds``, or until a signal) for
        ``resume`` (its request) or ``finish`` (None). The wait is open before it is
        announced: a ``finish`` sent at once finds it."""
        with self.lock:
            self.waiting, self.next, self.finished = True, None, False
            self.decided.clear()
        announce()
        deadline = time.monotonic() + seconds
        while not signalled and not self.decided.wait(
            min(0.5, max(0.0, deadline - time.monotonic()))
        ):
            if time.monotonic() >= deadline:
                break
        if self.decided.is_set():
            self.sent.wait(10)  # the control plane hears its answer before the pod goes
        with self.lock:
            self.waiting = False
            request, self.next = self.next, None
        return None if signalled else request

    def replied(self) -> None:
        self.sent.set()


class AgentStdin:
    """The agent's stdin: the first message, follow-ups and interrupts, and when to close it
    (see the module docstring). Counters under ``state``; writes (which may block on a full
    pipe) under ``writing``, so a slow reader never holds up the output relay."""

    def __init__(self, pipe: IO[bytes], close_after: set[str], first: bytes, *, window: float,
                 interrupt: bytes, interrupted_window: float, replays: bool) -> None:  # fmt: skip
        self.pipe = pipe
        self.replays = replays
        self.close_after = close_after
        self.window = window
        self.interrupt_bytes = interrupt
        self.interrupted_window = interrupted_window
        self.state = threading.Lock()
        self.writing = threading.Lock()
        self.open = True
        self.pending = 1 if first and close_after else 0
        self.interrupted = False
        self.timer: threading.Timer | None = None

    def write(self, data: bytes) -> str | None:
        with self.writing:
            if self.pipe.closed:
                return "the agent's stdin is closed: it takes no more messages"
            try:
                self.pipe.write(data)
                self.pipe.flush()
            except (OSError, ValueError):
                self.open = False
                return "the agent's stdin is closed: it takes no more messages"
        return None

    def send(self, data: bytes) -> str | None:
        with self.state:
            if not self.open:
                return "the agent's stdin is closed: it takes no more messages"
            if self.close_after:
                self.pending += 1
            self._cancel_timer()
        return self.write(data)

    def interrupt(self) -> str | None:
        with self.state:
            if not self.interrupt_bytes:
                return "this agent cannot be interrupted: stop the run instead"
            if not self.open:
                return "the agent's stdin is closed: it is finishing"
            if self.timer is not None:
                return "no turn is running: the agent is waiting for a message"
            self.interrupted = True
        return self.write(self.interrupt_bytes)

    def on_stdout(self, line: bytes) -> None:
        """A line of the agent's: the echo of a message it took, a turn's end, or other."""
        if self.replays and _is_replay(line):
            with self.state:
                self.pending = max(0, self.pending - 1)
            return
        if _top_type(line) in self.close_after:
            self.turn_ended(api_failed=_failed_on_api(line))

    def turn_ended(self, *, api_failed: bool = False) -> None:
        with self.state:
            if not self.open:
                return
            if not self.replays:
                self.pending = max(0, self.pending - 1)
            interrupted, self.interrupted = self.interrupted, False
            if self.pending:
                return  # a queued message is answered next
            window = self.window
            if interrupted:
                window = max(window, self.interrupted_window)
            if window <= 0 or api_failed:  # a usage limit, an outage: no window
                self.open = False
            else:
                self.timer = threading.Timer(window, self._expire, args=(window,))
                self.timer.daemon = True
                self.timer.start()
                notice(WAITING_RECORD + json.dumps({"seconds": window}))
                return
        self.close()

    def _expire(self, window: float) -> None:
        with self.state:
            if self.timer is None or self.timer is not threading.current_thread():
                return  # a message came meanwhile
            self.timer = None
            self.open = False
        notice(f"no follow-up came within {window:g} s: the agent ends on its last answer")
        self.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        with self.state:
            self.open = False
            self._cancel_timer()
        with self.writing, contextlib.suppress(OSError, ValueError):
            self.pipe.close()

    def handle(self, request: object) -> dict[str, object]:
        op = request.get("op") if isinstance(request, dict) else None
        if op == "ping":
            return {"ok": True}
        if op == "send" and isinstance(request, dict) and isinstance(request.get("data"), str):
            try:
                data = base64.b64decode(request["data"], validate=True)
            except ValueError:
                return {"ok": False, "error": "bad request: data is not base64"}
            error = self.send(data)
        elif op == "interrupt":
            error = self.interrupt()
        else:
            return {"ok": False, "error": f"unknown request {op!r}"}
        return {"ok": False, "error": error} if error else {"ok": True}


def control_path() -> str:
    return os.environ.get("AGENTFARM_CONTROL") or CONTROL_SOCKET


def serve_control(feeder: Control) -> socket.socket | None:
    """Answer control requests on a unix socket, one connection at a time, on a thread."""
    path = control_path()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(8)
    except OSError as exc:
        notice(f"follow-ups cannot reach this agent: no control socket at {path} ({exc})")
        listener.close()
        return None

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the agent has exited
            with conn, contextlib.suppress(OSError):
                conn.settimeout(30)
                line = conn.makefile("rb").readline(CONTROL_LIMIT)
                try:
                    reply = feeder.handle(json.loads(line))
                except ValueError:
                    reply = {"ok": False, "error": "bad request: not JSON"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            feeder.replied()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def control() -> int:
    """``entrypoint.py control``: pass one request line from stdin to the running ``run``
    and print its reply (the exec API carries both)."""
    line = sys.stdin.buffer.readline(CONTROL_LIMIT)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(control_path())
            conn.sendall(line if line.endswith(b"\n") else line + b"\n")
            reply = conn.makefile("rb").readline(CONTROL_LIMIT)
    except OSError as exc:
        reply = b""
        why = f"the agent is not running or not listening ({exc.strerror or exc})"
    else:
        why = "the agent hung up without a reply"
    if not reply.strip():
        reply = json.dumps({"ok": False, "error": why}).encode() + b"\n"
    sys.stdout.buffer.write(reply)
    sys.stdout.buffer.flush()
    return 0


def copy_credentials(shared: str, claude_dir: str) -> None:
    """Copy the shared ~/.claude's credentials file, and only that, into the pod's own
    ~/.claude (the shared volume is mounted read-only: no run can plant hooks there)."""
    source = os.path.join(shared, ".credentials.json")
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        notice(
            f"no .credentials.json in the shared ~/.claude ({shared}): log in once with the "
            "kit's login pod (docs/deploy.md)"
        )
        return
    except OSError as exc:
        notice(f"cannot read the shared credentials {source}: {exc.strerror}")
        return
    with os.fdopen(fd, "rb") as fh:
        data = fh.read()
    os.makedirs(claude_dir, mode=0o700, exist_ok=True)
    target = os.path.join(claude_dir, ".credentials.json")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(out, "wb") as fh:
        fh.write(data)


def reap_leftovers() -> None:
    """Kill every process the agent left behind, so none can read the push's environment
    (same uid). Only as PID 1, that is in the pod's own PID namespace, where every other
    process is the agent's; run by hand, there is no such boundary to rely on."""
    if os.getpid() != 1:
        return
    for _ in range(50):
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != 1]
        if not others:
            return
        for pid in others:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        time.sleep(0.1)


def report(branch: str, start: str, head: str | None, commits: int, error: str | None) -> None:
    """Where the branch ended up, for the control plane (its ``run.branch`` event): one
    notice line ``agentfarm.branch {json}``, before the sentence for people."""
    pushed = error is None and commits > 0
    data = {"branch": branch, "start": start, "head": head, "commits": commits,
            "pushed": pushed, "error": error[:4000] if error else error}  # fmt: skip
    notice(BRANCH_RECORD + json.dumps(data))


def push() -> None:
    """Push HEAD of the workspace to AGENTFARM_BRANCH of AGENTFARM_REPO, and nowhere else,
    when it has commits beyond where the run started (a follow-up's push is a fast-forward
    of the branch it continued).

    The workspace's git is read without a token and with hooks and fsmonitor off; the commits
    of its HEAD are copied into a fresh bare repository whose only config is ours, and the
    push, the one git command that holds the token, runs there, to the URL itself (no remote
    name, so no pushurl or insteadOf of the agent's applies)."""
    branch = os.environ["AGENTFARM_BRANCH"]
    repo = os.environ["AGENTFARM_REPO"]
    workspace = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    git_dir = os.path.join(workspace, ".git")
    fresh = ""
    base, count = "", 0
    head: str | None = None
    try:
        if os.path.islink(git_dir) or not os.path.isdir(git_dir):
            notice(f"not pushing {branch}: the workspace's .git is no longer a directory")
            return
        if os.path.lexists(os.path.join(git_dir, "commondir")):
            notice(f"not pushing {branch}: the workspace's .git/commondir points elsewhere")
            return
        env = plain_env()
        fd = os.open(os.path.join(git_dir, "agentfarm-base"), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as fh:
            read = fh.read(200).strip()
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", read):
            raise ValueError("the workspace's .git/agentfarm-base no longer names a commit")
        base = read
        if git("status", "--porcelain", env=env):
            notice("uncommitted changes are left in the workspace; only commits are pushed")
        head = git("rev-parse", "--verify", "HEAD^{commit}", env=env)
        count = int(git("rev-list", "--count", f"{base}..{head}", env=env) or "0")
        if count == 0:
            report(branch, base, head, 0, None)
            notice(f"no commits on {branch}: nothing to push")
            return
        last = git("log", "-1", "--format=%h %s", head, env=env)
        fresh = tempfile.mkdtemp(prefix="agentfarm-push-")
        git("init", "--quiet", "--bare", fresh, env=env, cwd=fresh)
        # Borrow the workspace's objects just long enough to copy what the branch needs: no
        # git process runs in the workspace (nor reads its config) from here on.
        alternates = os.path.join(fresh, "objects", "info", "alternates")
        with open(alternates, "w") as fh:
            fh.write(os.path.join(os.path.abspath(git_dir), "objects") + "\n")
        git("update-ref", f"refs/heads/{branch}", head, env=env, cwd=fresh)
        git("repack", "-a", "-d", "-q", env=env, cwd=fresh)
        os.unlink(alternates)
        reap_leftovers()
        git(
            "push", "--quiet", "--", repo, f"refs/heads/{branch}:refs/heads/{branch}",
            env=token_env(), cwd=fresh, timeout=300,
        )  # fmt: skip
        report(branch, base, head, count, None)
        notice(f"pushed {count} commit(s) to {branch} (last: {last})")
    except (OSError, ValueError, RuntimeError, subprocess.TimeoutExpired) as exc:
        if base:
            report(branch, base, head, count, mask(str(exc)))
        notice(f"pushing {branch} failed: {exc}")
    finally:
        if fresh:
            shutil.rmtree(fresh, ignore_errors=True)


def _top_type(line: bytes) -> str | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value.get("type") if isinstance(value, dict) else None


def _is_replay(line: bytes) -> bool:
    """The echo of a stdin message the agent took (domain/launch.py, is_replay)."""
    if b'"isReplay"' not in line:
        return False
    try:
        value = json.loads(line)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("type") == "user" and value.get("isReplay") is True


def _failed_on_api(line: bytes) -> bool:
    """A turn's end saying the model's API failed (domain/launch.py, failed_on_api)."""
    if b'"api_error"' not in line:
        return False
    try:
        value = json.loads(line)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("terminal_reason") == "api_error"


def _make_undumpable() -> None:
    """Keep /proc/1/environ (which holds git tokens) unreadable by the agent's processes."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4


# --- the agent's session, carried out of the pod and back (a continued run) ----------------
# A run that ended can be continued later in a new pod (backends/kubernetes/sessions.py): at
# the run's end, before ``finish``, the control plane execs ``session-out`` and keeps the
# bundle; the continued run's pod gets it back with ``session-in`` before its agent resumes
# the session. A bundle is one JSON line ``{"files": [{"name", "size"}], "size": N}`` (names
# under ~/.claude) and then N bytes: the files' contents, one after another, zlib-compressed.

#: At most this many bytes of session files are carried (more: an ``error`` line instead).
SESSION_LIMIT = 64 << 20
SESSION_HEADER_LIMIT = 1 << 20
SESSION_MAX_FILES = 4096
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: Under a session's own directory (large tool results, subagents' transcripts).
SESSION_SUBDIRS = ("subagents", "tool-results")


def session_project() -> str:
    """Claude Code's directory for the workspace's sessions, under ~/.claude (its cwd with
    every character but letters and digits made ``-``)."""
    workspace = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    return "projects/" + re.sub(r"[^A-Za-z0-9]", "-", workspace)


def session_name_re() -> re.Pattern[str]:
    project = re.escape(session_project())
    subdirs = "|".join(SESSION_SUBDIRS)
    return re.compile(
        rf"{project}/{_UUID}(?:\.jsonl|/(?:{subdirs})/[A-Za-z0-9][A-Za-z0-9._-]{{0,127}})"
    )


def _session_candidates(claude: str) -> list[str]:
    """Names (under ``claude``) of the session files there: regular files only, no links."""
    names: list[str] = []
    project = session_project()
    pattern = session_name_re()

    def files(rel: str) -> list[str]:
        path = os.path.join(claude, rel)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return []
            entries = sorted(os.listdir(path))
        except OSError:
            return []
        return [f"{rel}/{entry}" for entry in entries]

    for rel in files(project):
        if pattern.fullmatch(rel):
            names.append(rel)
        elif re.fullmatch(_UUID, os.path.basename(rel)):
            for sub in SESSION_SUBDIRS:
                names += [n for n in files(f"{rel}/{sub}") if pattern.fullmatch(n)]
    return names


def _read_regular(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read(SESSION_LIMIT + 1)


def session_out() -> int:
    """``entrypoint.py session-out``: the session files of ~/.claude as a bundle on stdout,
    or ``{"error": ...}`` when they are over SESSION_LIMIT."""
    claude = os.path.join(os.environ.get("HOME") or "/home/agent", ".claude")
    files: list[dict[str, object]] = []
    packer = zlib.compressobj(6)
    chunks: list[bytes] = []
    total = 0
    for name in _session_candidates(claude):
        data = _read_regular(os.path.join(claude, name))
        if data is None:
            continue
        total += len(data)
        if total > SESSION_LIMIT or len(files) >= SESSION_MAX_FILES:
            limit = SESSION_LIMIT >> 20
            error = (
                f"the agent's session files are over {limit} MiB or {SESSION_MAX_FILES} files, "
                "the most carried out of a pod"
            )
            sys.stdout.buffer.write(json.dumps({"error": error}).encode() + b"\n")
            return 0
        files.append({"name": name, "size": len(data)})
        chunks.append(packer.compress(data))
    chunks.append(packer.flush())
    packed = b"".join(chunks)
    header = json.dumps({"files": files, "size": len(packed)}).encode()
    sys.stdout.buffer.write(header + b"\n" + packed)
    sys.stdout.buffer.flush()
    return 0


def session_in() -> int:
    """``entrypoint.py session-in``: a bundle on stdin, its files put back under ~/.claude
    (only session file names; a file there already is replaced, never followed)."""
    try:
        count = _restore_session(sys.stdin.buffer)
        reply: dict[str, object] = {"ok": True, "files": count}
    except (OSError, ValueError, zlib.error) as exc:
        reply = {"ok": False, "error": f"cannot restore the agent's session: {exc}"}
    sys.stdout.buffer.write(json.dumps(reply).encode() + b"\n")
    sys.stdout.buffer.flush()
    return 0


def _restore_session(stream: IO[bytes]) -> int:
    header = json.loads(stream.readline(SESSION_HEADER_LIMIT))
    files, size = header.get("files"), header.get("size")
    if not isinstance(files, list) or not isinstance(size, int) or size < 0:
        raise ValueError("the bundle's header is not what session-out writes")
    pattern, total, wanted = session_name_re(), 0, []
    for item in files:
        name, length = item.get("name"), item.get("size")
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise ValueError(f"unexpected file name {str(name)[:100]!r} in the bundle")
        if not isinstance(length, int) or length < 0:
            raise ValueError("a file size in the bundle is not a count of bytes")
        total += length
        wanted.append((name, length))
    if total > SESSION_LIMIT or len(wanted) > SESSION_MAX_FILES:
        raise ValueError(f"the bundle holds over {SESSION_LIMIT >> 20} MiB or too many files")
    packed = stream.read(size)
    data = zlib.decompressobj().decompress(packed, total + 1)
    if len(packed) != size or len(data) != total:
        raise ValueError("the bundle is cut short or its sizes do not add up")
    claude = os.path.join(os.environ.get("HOME") or "/home/agent", ".claude")
    offset = 0
    for name, length in wanted:
        path = os.path.join(claude, name)
        _make_dirs(claude, os.path.dirname(name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data[offset : offset + length])
        offset += length
    return len(wanted)


def _make_dirs(root: str, rel: str) -> None:
    """Create ``rel`` under ``root`` one level at a time, refusing a link on the way."""
    path = root
    for part in ["", *rel.split("/")]:
        path = os.path.join(path, part) if part else path
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise ValueError(f"{path} is not a directory") from None


def main(args: list[str]) -> int:
    if args[:1] == ["clone"]:
        return clone()
    if args[:1] == ["control"]:
        return control()
    if args[:1] == ["session-out"]:
        return session_out()
    if args[:1] == ["session-in"]:
        return session_in()
    if args[:1] == ["run"]:
        rest = args[1:]
        return run(rest[1:] if rest[:1] == ["--"] else rest)
    print(
        "usage: entrypoint.py clone | run -- ARGV... | control | session-out | session-in",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
