"""Host-side git for run workspaces (async).

A workspace is written by the agent, so everything in it is untrusted: its ``.git/config``
could name hooks, an fsmonitor, an alternate-refs command or URL rewrites that would run or
leak when the host later runs git there. Every call therefore disables hooks and fsmonitor on
the command line (which outranks repository config and reaches child git processes), and
before the host touches a finished workspace, :func:`sanitize` refuses a ``.git`` holding
a symlink (or being one), removes ``commondir`` and grafts, and rewrites its config and
alternates from what the host knows. Workspaces belong to the sandbox uid, hence the
``safe.directory`` exception, given per call for that one path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import stat
from pathlib import Path

from agentfarm.domain import errors, launch

SAFE_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.alternateRefsCommand=",
    "core.sshCommand=ssh",
    "protocol.ext.allow=never",
)

_SCP_LIKE = re.compile(r"^[A-Za-z0-9_.+-]+@[^/:]+:")
_CREDENTIALS = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def is_local(repo: str) -> bool:
    """A path (not a URL or ``user@host:path``) to a repository on this machine."""
    if "://" in repo or _SCP_LIKE.match(repo):
        return repo.startswith("file://")
    return True


def local_path(repo: str) -> Path:
    return Path(repo.removeprefix("file://")).expanduser().resolve()


def strip_credentials(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x``."""
    return _CREDENTIALS.sub(r"\1", url)


class GitError(errors.LaunchError):
    pass


AUTH_REFUSED = (
    "the server refused the run's git token (git_token_secret): it is wrong, expired or "
    "revoked, or lacks access to the repository; store a valid one with `agentfarm secret set`"
)


def _config_args(trusted: tuple[Path, ...]) -> list[str]:
    argv: list[str] = []
    for item in SAFE_CONFIG:
        argv += ["-c", item]
    for path in trusted:
        argv += ["-c", f"safe.directory={path}"]
    return argv


def auth_env(auth: launch.GitAuth | None) -> dict[str, str]:
    """The environment of a host git command: the server's, without any git configuration
    it carries (``GIT_CONFIG_*``), never prompting, plus the run's token as configuration
    (:meth:`~agentfarm.domain.launch.GitAuth.env`) when it has one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_CONFIG_")}
    # Never wait for a password on a terminal nobody watches.
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false")
    if auth is not None:
        env.update(auth.env())
    return env


def _mask(text: str, auth: launch.GitAuth | None) -> str:
    text = strip_credentials(text)
    if auth is not None:
        for value in (auth.token, auth.basic):
            text = text.replace(value, "***")
    return text


async def git(
    *args: str,
    cwd: Path | None = None,
    trusted: tuple[Path, ...] = (),
    limit: float = 600,
    auth: launch.GitAuth | None = None,
    stdin: str | None = None,
    check: bool = True,
    background: bool = False,
) -> str:
    """Run git with the safe settings; raise :class:`GitError` with git's own words (unless
    not ``check``: then its output whatever its exit status). With ``auth``, git gets the
    token through its environment only (not argv, not a file). ``background`` work (the
    clone pool's) runs at a lower CPU priority than the agents starting meanwhile."""
    argv = ["git", *_config_args(trusted), *args]
    env = auth_env(auth)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Its own group: on time-out the helpers git started (git-remote-http, upload-pack)
        # go with it, and none keeps our pipes open.
        start_new_session=True,
    )
    if background:
        with contextlib.suppress(OSError):  # it may have just ended
            os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
    try:
        data = None if stdin is None else stdin.encode()
        out, err = await asyncio.wait_for(proc.communicate(data), limit)
    except TimeoutError:
        raise GitError(f"git {_verb(args)} took longer than {limit:g} s") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: stop it and its helpers
            with contextlib.suppress(ProcessLookupError):  # it may have just ended
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if proc.returncode != 0 and check:
        message = _mask(err.decode(errors="replace").strip(), auth) or "no output"
        if auth is not None and "could not read Username" in message:
            # The server answered 401 to the token, and git fell back to asking for one.
            message = f"{AUTH_REFUSED} (git: {message})"
        raise GitError(f"git {_verb(args)} failed: {message}")
    return out.decode(errors="replace")


def _verb(args: tuple[str, ...]) -> str:
    """The git command in ``args`` (``fetch`` in ``-c x=y fetch ...``), for messages."""
    words = iter(args)
    for word in words:
        if word == "-c":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return "command"


async def clone(
    repo: str,
    dest: Path,
    base_branch: str | None,
    auth: launch.GitAuth | None = None,
    *,
    background: bool = False,
) -> None:
    """Clone ``repo`` into ``dest`` (sharing objects with a local source)."""
    args = ["clone", "--quiet"]
    if base_branch:
        args += ["--branch", base_branch]
    if is_local(repo):
        source = local_path(repo)
        args += ["--shared", "--", str(source), str(dest)]
    else:
        args += ["--", repo, str(dest)]
    await git(*args, auth=auth, background=background)
    if not is_local(repo) and strip_credentials(repo) != repo:
        # The clone wrote the URL, credentials included, into .git/config: take them out.
        await git("remote", "set-url", "origin", strip_credentials(repo), cwd=dest)


async def new_branch(workspace: Path, branch: str) -> None:
    await git("checkout", "--quiet", "-b", branch, cwd=workspace)


async def head(workspace: Path, ref: str = "HEAD") -> str:
    """The commit ``ref`` names in the workspace (a host-written one: at launch, or after
    :func:`sanitize`)."""
    trusted = (workspace, workspace / ".git")
    out = await git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
                    cwd=workspace, trusted=trusted)  # fmt: skip
    return out.strip()


async def count(workspace: Path, start: str, end: str) -> int:
    """Commits reachable from ``end`` and not from ``start``."""
    trusted = (workspace, workspace / ".git")
    out = await git("rev-list", "--count", f"{start}..{end}", "--", cwd=workspace, trusted=trusted)
    return int(out.strip() or "0")


def alternates(workspace: Path) -> list[Path]:
    """Object directories the workspace borrows from, following chained alternates."""
    found: list[Path] = []
    todo = [workspace / ".git" / "objects"]
    while todo and len(found) < 16:
        info = todo.pop() / "info" / "alternates"
        try:
            lines = info.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                path = (info.parent.parent / line).resolve()
                if path not in found:
                    found.append(path)
                    todo.append(path)
    return found


#: Files that make git read another repository's objects, refs or config, or rewrite history;
#: our clone has none of them, so one in a finished workspace was planted by the agent.
PLANTED = ("commondir", "info/grafts", "objects/info/http-alternates")


def _odd_entry(git_dir: Path) -> tuple[str, str] | None:
    """The first symlink or special file under ``git_dir`` (never following links), with
    what it is; None if there are only plain files and directories."""
    todo = [git_dir]
    while todo:
        with os.scandir(todo.pop()) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    todo.append(Path(entry.path))
                elif not stat.S_ISREG(mode):
                    what = "a symlink" if stat.S_ISLNK(mode) else "a special file"
                    return os.path.relpath(entry.path, git_dir), what
    return None


def _write_no_follow(directory_fd: int, name: str, text: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o644, dir_fd=directory_fd)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def sanitize(workspace: Path, config: str, alternates_text: str | None) -> list[str]:
    """Make a finished workspace's git directory safe for host git (blocking; after the agent
    exited): refuse a ``.git`` that is not a plain directory of plain files (a symlink there
    would make the host read or write whatever it points to), remove the files in
    :data:`PLANTED`, and put back the config and alternates the host wrote. Raises
    :class:`GitError` saying why when it refuses; returns notices of what it removed."""
    git_dir = workspace / ".git"
    try:
        mode = os.lstat(git_dir).st_mode
    except FileNotFoundError:
        raise GitError("the agent removed .git from the workspace") from None
    if stat.S_ISLNK(mode):
        raise GitError("the agent replaced .git with a symlink; host git does not follow it")
    if not stat.S_ISDIR(mode):
        raise GitError("the agent replaced .git with a file; host git does not follow it")
    try:
        return _clean(git_dir, config, alternates_text)
    except OSError as exc:  # a file where git keeps a directory, or the like
        name = Path(str(exc.filename)).name if exc.filename else ".git"
        raise GitError(
            f"the agent left .git in a state git never does ({exc.strerror}: {name})"
        ) from None


def _clean(git_dir: Path, config: str, alternates_text: str | None) -> list[str]:
    odd = _odd_entry(git_dir)
    if odd is not None:
        raise GitError(f"the agent left {odd[1]} at .git/{odd[0]}; host git does not follow it")
    notices = []
    for name in PLANTED:
        path = git_dir / name
        if path.exists():
            path.unlink()
            notices.append(f"ignored .git/{name}, which the agent wrote: git does not use it")
    # No symlink is left to follow, but open without following anyway: belt and braces.
    info = git_dir / "objects" / "info"
    info.mkdir(parents=True, exist_ok=True)
    git_fd = os.open(git_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info_fd = os.open(info, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _write_no_follow(git_fd, "config", config)
        if alternates_text is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink("alternates", dir_fd=info_fd)
        else:
            _write_no_follow(info_fd, "alternates", alternates_text)
    finally:
        os.close(info_fd)
        os.close(git_fd)
    return notices


async def fetch_back(source: Path, workspace: Path, branch: str, *, force: bool = True) -> None:
    """Copy ``branch`` from the workspace into the local source repository (fast-forward
    only unless ``force``: a follow-up continues a branch that may have moved meanwhile)."""
    refspec = f"{'+' if force else ''}refs/heads/{branch}:refs/heads/{branch}"
    # git drops -c settings (GIT_CONFIG_PARAMETERS) when it spawns upload-pack for a local
    # transport, so the workspace side gets them through --upload-pack explicitly.
    upload_pack = ["git", *_config_args((workspace, workspace / ".git")), "upload-pack"]
    # fsckObjects: what the agent committed lands in the user's repository; a malformed object
    # (a hostile .gitmodules, say) stops here rather than at the user's next checkout.
    await git(
        "-c", "fetch.fsckObjects=true",
        "fetch", "--quiet", "--no-tags", "--upload-pack", shlex.join(upload_pack),
        str(workspace), refspec, cwd=source, trusted=(source,),
    )  # fmt: skip


async def push(repo: str, workspace: Path, branch: str, auth: launch.GitAuth | None = None) -> None:
    """Push ``branch`` to ``repo`` (the URL itself, not a remote name), fast-forward only."""
    # Git's words without its advice on pulling first (the reason is what a person needs).
    await git(
        "-c", "advice.pushUpdateRejected=false",
        "push", "--quiet", "--", repo, f"refs/heads/{branch}:refs/heads/{branch}",
        cwd=workspace, trusted=(workspace, workspace / ".git"), auth=auth,
    )  # fmt: skip


async def git_head(
    *args: str, cwd: Path, trusted: tuple[Path, ...], max_bytes: int, limit: float = 120
) -> tuple[str, bool]:
    """Like :func:`git`, but keeps only the first ``max_bytes`` of its output and then stops
    it (a huge diff is never read whole); True when the output was cut."""
    proc = await asyncio.create_subprocess_exec(
        "git", *_config_args(trusted), *args, cwd=cwd, env=auth_env(None),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    out, err, cut = bytearray(), b"", False
    stdout, stderr = proc.stdout, proc.stderr
    try:
        async with asyncio.timeout(limit):
            while stdout is not None and (chunk := await stdout.read(65536)):
                out += chunk
                if len(out) > max_bytes:
                    cut = True
                    break
            if not cut:
                err = await stderr.read() if stderr is not None else b""
                await proc.wait()
    except TimeoutError:
        raise GitError(f"git {_verb(args)} took longer than {limit:g} s") from None
    finally:
        if proc.returncode is None:  # cut short, timed out or cancelled: stop it and its helpers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if not cut and proc.returncode != 0:
        message = strip_credentials(err.decode(errors="replace").strip()) or "no output"
        raise GitError(f"git {_verb(args)} failed: {message}")
    return bytes(out[:max_bytes]).decode(errors="replace"), cut
