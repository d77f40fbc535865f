"""Re-record the Claude Code stream-json samples in this directory.

Runs the real CLI (``$AGENTFARM_TOOLS/node_modules/.bin/claude``) against the scripted fake
Messages API in a throwaway git repository and keeps its stdout lines verbatim, one file per
case, plus ``<case>.meta.json`` (exit code, stderr lines). Run from the repository root:

    .venv/bin/python -m tests.data.claude.record
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.fakes import anthropic_api as fake

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def claude() -> str:
    tools = Path(os.environ.get("AGENTFARM_TOOLS", ROOT / ".tools"))
    return str(tools / "node_modules" / ".bin" / "claude")


def user(text: str) -> dict[str, Any]:
    return {"type": "user", "message": {"role": "user", "content": text}}


INTERRUPT = {"type": "control_request", "request_id": "int-1", "request": {"subtype": "interrupt"}}

#: case -> (extra argv, stdin steps: a message, or a number of seconds to wait)
CASES: dict[str, tuple[list[str], list[Any]]] = {
    "write-and-commit": ([], [user(f"{fake.marker('write-and-commit')} add a file")]),
    "followup": ([], [user(f"{fake.marker('hello')} hi"), "result", user("and again"), "result"]),
    "api-error": ([], [user(f"{fake.marker('api-error')} anything")]),
    "max-turns": (["--max-turns", "2"], [user(f"{fake.marker('many-events', 5)} loop")]),
    "interrupt": ([], [user(f"{fake.marker('sleep')} wait"), 2.5, INTERRUPT, "result"]),
    "blocks": ([], [user(f"{fake.marker('blocks')} think")]),
}


def record(case: str, base_url: str, repo: Path, home: Path) -> None:
    extra, steps = CASES[case]
    argv = [claude(), "-p", "--output-format", "stream-json", "--verbose"]
    argv += ["--input-format", "stream-json", "--permission-mode", "bypassPermissions", *extra]
    env = dict(
        os.environ,
        HOME=str(home),
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY="sk-ant-test-recording",
        CLAUDE_CODE_MAX_RETRIES="0",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        IS_SANDBOX="1",
        GIT_AUTHOR_NAME="Agent",
        GIT_AUTHOR_EMAIL="agent@example.com",
        GIT_COMMITTER_NAME="Agent",
        GIT_COMMITTER_EMAIL="agent@example.com",
    )
    proc = subprocess.Popen(
        argv,
        cwd=repo,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    lines: list[bytes] = []
    results = threading.Semaphore(0)

    def read() -> None:
        assert proc.stdout
        for line in proc.stdout:
            lines.append(line)
            if b'"type":"result"' in line:
                results.release()

    reader = threading.Thread(target=read)
    reader.start()
    for step in steps:
        if step == "result":
            results.acquire(timeout=60)
        elif isinstance(step, float):
            time.sleep(step)
        else:
            proc.stdin.write((json.dumps(step) + "\n").encode())
            proc.stdin.flush()
    if steps[-1] != "result":
        results.acquire(timeout=60)
    proc.stdin.close()
    code = proc.wait(timeout=60)
    reader.join()
    stderr = proc.stderr.read().decode(errors="replace").splitlines()
    (HERE / f"{case}.jsonl").write_bytes(b"".join(lines))
    meta = {"exit_code": code, "stderr": stderr}
    (HERE / f"{case}.meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{case}: {len(lines)} lines, exit {code}")


def main() -> None:
    with fake.FakeAnthropic() as api, tempfile.TemporaryDirectory() as tmp:
        api.register(
            "blocks",
            [
                fake.turn(
                    fake.Thinking("The user wants me to look around first."),
                    fake.Text("Let me look."),
                    fake.ToolUse("Bash", {"command": "ls; exit 3", "description": "List"}),
                ),
                fake.text("The listing failed with exit code 3."),
            ],
        )
        for case in CASES:
            repo, home = Path(tmp) / case / "repo", Path(tmp) / case / "home"
            repo.mkdir(parents=True)
            home.mkdir()
            subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
            subprocess.run(
                ["git", "-C", str(repo), "-c", "user.name=a", "-c", "user.email=a@b",
                 "commit", "-q", "--allow-empty", "-m", "init"],
                check=True,
            )  # fmt: skip
            record(case, api.base_url, repo, home)


if __name__ == "__main__":
    main()
