#!/usr/bin/env python3
"""Entrypoint of the agentfarm agent image (standard library only).

    entrypoint.py clone            init container: clone AGENTFARM_REPO into the workspace on a
                                   new branch AGENTFARM_BRANCH (or, when it is also
                                   AGENTFARM_BASE_BRANCH, on that existing branch)
    entrypoint.py run -- ARGV...   agent container: run ARGV with the first stdin bytes from
                                   AGENTFARM_STDIN, relay its output, then push the branch

The control plane reads this container's log, which merges stdout and stderr, so everything
goes to stdout, one line per write, each line ``\\x1e<kind><seq> <payload>``: kind ``O`` for
the agent's stdout, ``E`` for its stderr, ``N`` for this script's notices, and ``seq`` counting
the lines from 1. The sequence number is the control plane's cursor: the kubelet rotates
container logs, so a line's position in the log it can still read says nothing.

Git tokens (AGENTFARM_GIT_CREDENTIALS names the variables) reach git only as an HTTP
Authorization header in GIT_CONFIG_* entries of the environment of the clone and of the push:
never on disk, never in an argv, never in the agent's environment, masked in any message.
The workspace is the agent's, so its .git (config, hooks, fsmonitor, pushurl, insteadOf,
commondir, a symlinked .git) is never trusted with a token: every git command here disables
hooks and fsmonitor, and the branch is pushed from a fresh repository holding a copy of its
commits and no configuration but ours, after every process the agent left was killed.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

KIND_STDOUT = b"O"
KIND_STDERR = b"E"
KIND_NOTICE = b"N"
#: Starts the notice that says where the branch ended up (JSON follows); the control plane's
#: handle (backends/kubernetes/handle.py, BRANCH_NOTICE) reads it.
BRANCH_RECORD = "agentfarm.branch "
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


def clone() -> int:
    repo = os.environ["AGENTFARM_REPO"]
    base = os.environ.get("AGENTFARM_BASE_BRANCH") or ""
    branch = os.environ["AGENTFARM_BRANCH"]
    workspace = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    env = token_env()
    try:
        args = ["clone", "--quiet", "--no-tags"]
        if base:
            args += ["--branch", base]
        git(*args, "--", repo, workspace, env=env)
        if base != branch:  # else a follow-up: it continues the branch it cloned
            git("checkout", "--quiet", "-b", branch, env=env)
        git("config", "user.name", "agentfarm", env=env)
        git("config", "user.email", "agentfarm@localhost", env=env)
        head = git("rev-parse", "HEAD", env=env)
        git_dir = os.path.join(workspace, ".git")
        with open(os.path.join(git_dir, "agentfarm-base"), "w") as fh:
            fh.write(head + "\n")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(mask(str(exc)).replace("\n", " "), file=sys.stderr)
        return 1
    print(f"cloned {repo} at {head[:12]} onto branch {branch}", file=sys.stderr)
    return 0


def run(argv: list[str]) -> int:
    if not argv:
        print("usage: entrypoint.py run -- ARGV...", file=sys.stderr)
        return 2
    _make_undumpable()
    workspace = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    stdin_path = os.environ.get("AGENTFARM_STDIN", "")
    first = b""
    if stdin_path and os.path.exists(stdin_path):
        with open(stdin_path, "rb") as fh:
            first = fh.read()
    close_after = set(json.loads(os.environ.get("AGENTFARM_CLOSE_STDIN_AFTER") or "[]"))
    hidden = hidden_names()
    env = trust_workspace({k: v for k, v in os.environ.items() if k not in hidden})
    shared = os.environ.get("AGENTFARM_SHARED_CLAUDE")
    if shared:
        copy_credentials(shared, os.path.join(env.get("HOME") or "/home/agent", ".claude"))

    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=workspace,
        start_new_session=True,
    )
    signalled: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        signalled.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    if stdin is None or stdout is None or stderr is None:
        raise RuntimeError("the agent's pipes were not created")
    stdin_lock = threading.Lock()
    written = threading.Event()

    def close_stdin() -> None:
        with stdin_lock, contextlib.suppress(OSError, ValueError):
            stdin.close()

    def feed() -> None:
        with contextlib.suppress(OSError, ValueError):
            stdin.write(first)
            stdin.flush()
        written.set()
        if not close_after:  # nothing to wait for: the agent has everything it will get
            close_stdin()

    def relay_stderr() -> None:
        for line in stderr:
            emit(KIND_STDERR, line)

    def relay_stdout() -> None:
        for line in stdout:
            emit(KIND_STDOUT, line)
            if close_after and not stdin.closed and _top_type(line) in close_after:
                written.wait(5)
                close_stdin()

    threads = [threading.Thread(target=feed, daemon=True)]
    threads.append(threading.Thread(target=relay_stderr, daemon=True))
    threads.append(threading.Thread(target=relay_stdout, daemon=True))
    for thread in threads:
        thread.start()
    code = proc.wait()
    for thread in threads:
        thread.join(timeout=5)
    if any(thread.is_alive() for thread in threads):
        # A process the agent left behind holds its stdout or stderr open: the run is over
        # all the same (in the pod, where this is PID 1, that process goes now).
        reap_leftovers()
        for thread in threads:
            thread.join(timeout=5)
    code = 128 - code if code < 0 else code
    if not signalled and os.environ.get("AGENTFARM_PUSH") == "1":
        push()
    return code


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


def _make_undumpable() -> None:
    """Keep /proc/1/environ (which holds git tokens) unreadable by the agent's processes."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4


def main(args: list[str]) -> int:
    if args[:1] == ["clone"]:
        return clone()
    if args[:1] == ["run"]:
        rest = args[1:]
        return run(rest[1:] if rest[:1] == ["--"] else rest)
    print("usage: entrypoint.py clone | run -- ARGV...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
