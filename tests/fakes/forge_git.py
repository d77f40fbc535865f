"""Real git over HTTP for the fake forge: ``git http-backend`` run as CGI, one process per
request, with the request body streamed to its stdin and its output streamed back.

Bare repositories live under one project root; ``REMOTE_USER`` is set to the authenticated
user, which is what lets ``http-backend`` accept pushes (``git-receive-pack``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

CHUNK = 64 * 1024
#: Author and committer of the commits the fake makes itself (seeding a repository).
SEED_ENV = {
    "GIT_AUTHOR_NAME": "Fake Forge",
    "GIT_AUTHOR_EMAIL": "forge@example.com",
    "GIT_COMMITTER_NAME": "Fake Forge",
    "GIT_COMMITTER_EMAIL": "forge@example.com",
}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for git that ignores the host's and the user's git configuration."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LANG": "C",
        **extra,
    }


def git(*args: str, cwd: Path, home: Path) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=clean_env(home, **SEED_ENV),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def create_bare(
    root: Path, repo: str, *, default_branch: str, files: Mapping[str, str], home: Path
) -> Path:
    """A bare repository at ``root/owner/name.git``, with one commit of ``files`` if any."""
    bare = root / f"{repo}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", "-b", default_branch, str(bare), cwd=root, home=home)
    if files:
        work = root / ".seed" / repo
        work.mkdir(parents=True)
        git("init", "-q", "-b", default_branch, cwd=work, home=home)
        for name, content in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(content)
        git("add", "-A", cwd=work, home=home)
        git("commit", "-q", "-m", "Initial commit", cwd=work, home=home)
        git("push", "-q", str(bare), default_branch, cwd=work, home=home)
    return bare


def rev_parse(bare: Path, ref: str, home: Path) -> str | None:
    """The commit ``ref`` (a branch or a sha) names in ``bare``, or None."""
    if ref.startswith("-"):
        return None
    done = subprocess.run(
        ["git", "--git-dir", str(bare), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        env=clean_env(home),
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


async def serve(request: Request, *, project_root: Path, path_info: str, user: str) -> Response:
    """Answer one smart-HTTP request (``info/refs``, ``git-upload-pack``, ``git-receive-pack``)
    by running ``git http-backend``."""
    env = clean_env(
        project_root,
        GIT_PROJECT_ROOT=str(project_root),
        GIT_HTTP_EXPORT_ALL="1",
        PATH_INFO=path_info,
        REQUEST_METHOD=request.method,
        QUERY_STRING=request.url.query,
        REMOTE_USER=user,
        REMOTE_ADDR="127.0.0.1",
        CONTENT_TYPE=request.headers.get("content-type", ""),
    )
    for header, variable in (
        ("content-length", "CONTENT_LENGTH"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ):
        if header in request.headers:
            env[variable] = request.headers[header]
    with (project_root / "http-backend.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    # The backend's output is drained into a queue while the request body is fed, so neither
    # pipe can fill up and stall the other.
    output: asyncio.Queue[bytes] = asyncio.Queue()

    async def pump() -> None:
        while chunk := await stdout.read(CHUNK):
            await output.put(chunk)
        await output.put(b"")

    reader = asyncio.create_task(pump())
    # The whole body goes in before the response starts: once it has, starlette listens for a
    # disconnect on the same channel and would swallow the rest of a large (chunked) push.
    try:
        async for chunk in request.stream():
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the backend stopped reading: its answer says why
    finally:
        stdin.close()
    head, ended = b"", False
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        got = await output.get()
        ended = not got
        if ended:
            break
        head += got
    separator = b"\r\n\r\n" if b"\r\n\r\n" in head else b"\n\n"
    header_block, _, rest = head.partition(separator)
    status, headers = 200, {}
    for line in header_block.decode("latin-1").splitlines():
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = int(value.strip().split()[0])
        elif key:
            headers[key.strip()] = value.strip()

    async def body() -> AsyncIterator[bytes]:
        try:
            if rest:
                yield rest
            while not ended and (piece := await output.get()):
                yield piece
        finally:
            await reader
            await proc.wait()

    return StreamingResponse(body(), status_code=status, headers=headers)
