#!/usr/bin/env python3
"""Entrypoint of the agentfarm agent image (standard library only).

    entrypoint.py clone            init container: clone AGENTFARM_REPO into the workspace on a
                                   new branch AGENTFARM_BRANCH
    entrypoint.py run -- ARGV...   agent container: run ARGV with the first stdin bytes from
                                   AGENTFARM_STDIN, relay its output, then push the branch

The control plane reads this container's log, which merges stdout and stderr, so everything
goes to stdout, one line per write: the agent's stdout lines unchanged, its stderr lines and
this script's notices tagged with a leading "\\x1eE " or "\\x1eN " (see backends/kubernetes).

Git tokens (AGENTFARM_GIT_CREDENTIALS names the variables) reach git only through
GIT_CONFIG_* `insteadOf` rewrites in the environment of the git commands run here: never on
disk, never in the agent's environment, and masked in any message printed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from urllib.parse import quote

TAG_STDERR = b"\x1eE "
TAG_NOTICE = b"\x1eN "
_out = threading.Lock()
_secrets: list[str] = []


def emit(line: bytes) -> None:
    with _out:
        sys.stdout.buffer.write(line if line.endswith(b"\n") else line + b"\n")
        sys.stdout.buffer.flush()


def mask(text: str) -> str:
    for value in _secrets:
        text = text.replace(value, "***")
    return text


def notice(text: str) -> None:
    emit(TAG_NOTICE + mask(text).replace("\n", " ").encode())


def git_env() -> dict[str, str]:
    """The environment for git: token rewrites as GIT_CONFIG_* entries, no prompts."""
    env = dict(os.environ)
    rules = json.loads(os.environ.get("AGENTFARM_GIT_CREDENTIALS") or "[]")
    count = 0
    for rule in rules:
        token = os.environ.get(rule["env"], "")
        if not token:
            continue
        _secrets.extend({token, quote(token, safe="")})
        prefix = rule["url"]
        authed = prefix.replace(
            "https://", f"https://{quote(rule['user'], safe='')}:{quote(token, safe='')}@", 1
        )
        env[f"GIT_CONFIG_KEY_{count}"] = f"url.{authed}.insteadOf"
        env[f"GIT_CONFIG_VALUE_{count}"] = prefix
        count += 1
    env["GIT_CONFIG_COUNT"] = str(count)
    env["GIT_TERMINAL_PROMPT"] = "0"
    return trust_workspace(env)


def trust_workspace(env: dict[str, str]) -> dict[str, str]:
    """Add ``safe.directory`` for the workspace: its volume's mount point belongs to root, so
    git (>= 2.35.2) would otherwise refuse a repository there for our uid ("dubious
    ownership"). Environment config counts as command-line config, which git honours."""
    count = int(env.get("GIT_CONFIG_COUNT") or "0")
    env[f"GIT_CONFIG_KEY_{count}"] = "safe.directory"
    env[f"GIT_CONFIG_VALUE_{count}"] = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    env["GIT_CONFIG_COUNT"] = str(count + 1)
    return env


def git(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run git in the workspace; raise with git's (masked) message on failure."""
    done = subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", *args],
        cwd=os.environ.get("AGENTFARM_WORKSPACE", "/workspace"),
        env=env or git_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        message = mask((done.stderr or done.stdout).strip()) or f"exit code {done.returncode}"
        raise RuntimeError(f"git {args[0]}: {message}")
    return done.stdout.strip()


def clone() -> int:
    repo = os.environ["AGENTFARM_REPO"]
    base = os.environ.get("AGENTFARM_BASE_BRANCH") or ""
    branch = os.environ["AGENTFARM_BRANCH"]
    workspace = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    env = git_env()
    try:
        args = ["clone", "--quiet", "--no-tags"]
        if base:
            args += ["--branch", base]
        git(*args, "--", repo, workspace, env=env)
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
    hidden = {"AGENTFARM_GIT_CREDENTIALS", "GITHUB_TOKEN", "GH_TOKEN", "FORGEJO_TOKEN"}
    env = trust_workspace({k: v for k, v in os.environ.items() if k not in hidden})
    git_environment = git_env()  # reads the tokens before the agent starts

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
            emit(TAG_STDERR + line.rstrip(b"\n"))

    threads = [threading.Thread(target=feed, daemon=True)]
    threads.append(threading.Thread(target=relay_stderr, daemon=True))
    for thread in threads:
        thread.start()
    for line in stdout:
        emit(line)
        if close_after and not stdin.closed and _top_type(line) in close_after:
            written.wait(5)
            close_stdin()
    code = proc.wait()
    for thread in threads:
        thread.join(timeout=5)
    code = 128 - code if code < 0 else code
    if not signalled and os.environ.get("AGENTFARM_PUSH") == "1":
        push(git_environment)
    return code


def push(env: dict[str, str]) -> None:
    branch = os.environ["AGENTFARM_BRANCH"]
    workspace = os.environ.get("AGENTFARM_WORKSPACE", "/workspace")
    try:
        with open(os.path.join(workspace, ".git", "agentfarm-base")) as fh:
            base = fh.read().strip()
        if git("status", "--porcelain", env=env):
            notice("uncommitted changes are left in the workspace; only commits are pushed")
        count = int(git("rev-list", "--count", f"{base}..HEAD", env=env) or "0")
        if count == 0:
            notice(f"no commits on {branch}: nothing to push")
            return
        last = git("log", "-1", "--format=%h %s", env=env)
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", env=env, timeout=300)
        notice(f"pushed {count} commit(s) to {branch} (last: {last})")
    except (OSError, ValueError, RuntimeError, subprocess.TimeoutExpired) as exc:
        notice(f"pushing {branch} failed: {exc}")


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
