"""The agent image's entrypoint (deploy/agent/entrypoint.py), run here as plain processes:
clone onto the run's branch, feed stdin and close it after `result`, tag stderr, push."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import realparts

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "deploy" / "agent" / "entrypoint.py"


def git(*args: str, cwd: Path | None = None) -> str:
    base = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    done = subprocess.run([*base, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    origin = tmp_path / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin))
    seed = tmp_path / "seed"
    git("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("x\n")
    git("add", ".", cwd=seed)
    git("commit", "-q", "-m", "init", cwd=seed)
    git("push", "-q", str(origin), "main", cwd=seed)
    (tmp_path / "ws").mkdir()
    (tmp_path / "home").mkdir()
    return dict(
        os.environ,
        HOME=str(tmp_path / "home"),
        AGENTFARM_REPO=f"file://{origin}",
        AGENTFARM_BASE_BRANCH="main",
        AGENTFARM_BRANCH="agentfarm/t1",
        AGENTFARM_WORKSPACE=str(tmp_path / "ws"),
        AGENTFARM_STDIN=str(tmp_path / "stdin"),
        AGENTFARM_CLOSE_STDIN_AFTER='["result"]',
        AGENTFARM_PUSH="1",
        AGENTFARM_GIT_CREDENTIALS="[]",
    )


def entrypoint(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT), *args],
        env=env, cwd=env["AGENTFARM_WORKSPACE"], capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_clone_run_and_push(env: dict[str, str], tmp_path: Path) -> None:
    assert entrypoint(env, "clone").returncode == 0
    Path(env["AGENTFARM_STDIN"]).write_text('"hello"\n')
    agent = tmp_path / "agent.sh"
    agent.write_text(
        '#!/bin/sh\nread line; echo "{\\"type\\":\\"system\\",\\"got\\":$line}"\n'
        "echo oops >&2; echo x > f.txt; git add f.txt; git commit -qm 'add f'\n"
        'echo \'{"type":"result"}\'; cat >/dev/null; echo closed\n'
    )
    agent.chmod(0o755)
    done = entrypoint(env, "run", "--", str(agent))
    assert done.returncode == 0
    lines = done.stdout.decode().split("\n")[:-1]  # str.splitlines splits at \x1e too
    # stdout and stderr are separate pipes: only the order within stdout is defined
    assert next(x for x in lines if not x.startswith("\x1e")) == '{"type":"system","got":"hello"}'
    assert "\x1eE oops" in lines
    assert '{"type":"result"}' in lines
    assert "closed" in lines  # stdin was closed after the result line
    assert lines[-1].startswith("\x1eN pushed 1 commit(s) to agentfarm/t1")
    origin = env["AGENTFARM_REPO"].removeprefix("file://")
    assert git("-C", origin, "log", "--format=%s", "agentfarm/t1").splitlines()[0] == "add f"


def test_clone_failure_is_one_clear_line_without_tokens(env: dict[str, str]) -> None:
    env |= {
        "AGENTFARM_REPO": "https://github.invalid/none/none.git",
        "AGENTFARM_GIT_CREDENTIALS": json.dumps(
            [{"url": "https://github.invalid/", "user": "x-access-token", "env": "GITHUB_TOKEN"}]
        ),
        "GITHUB_TOKEN": "ghp_supersecret",
    }
    done = entrypoint(env, "clone")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.startswith("git clone:")
    assert "ghp_supersecret" not in err


@pytest.mark.integration
def test_real_claude_cli_through_the_entrypoint(env: dict[str, str]) -> None:
    from tests.fakes import anthropic_api

    tools = Path(os.environ.get("AGENTFARM_TOOLS", REPO / ".tools"))
    claude = tools / "node_modules" / ".bin" / "claude"
    if not claude.exists():
        realparts.missing("Claude Code CLI", "run make claude")
    assert entrypoint(env, "clone").returncode == 0
    message = {"type": "user", "message": {"role": "user",
               "content": anthropic_api.marker("write-and-commit")}}  # fmt: skip
    Path(env["AGENTFARM_STDIN"]).write_text(json.dumps(message) + "\n")
    with anthropic_api.FakeAnthropic() as fake:
        env |= {
            "ANTHROPIC_BASE_URL": fake.base_url,
            "ANTHROPIC_API_KEY": "fake",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_MAX_RETRIES": "0",
        }
        if os.geteuid() == 0:
            env["IS_SANDBOX"] = "1"
        done = entrypoint(
            env, "run", "--", str(claude), "-p", "--output-format", "stream-json", "--verbose",
            "--input-format", "stream-json", "--permission-mode", "bypassPermissions",
            timeout=120,
        )  # fmt: skip
    lines = done.stdout.decode().split("\n")[:-1]  # str.splitlines splits at \x1e too
    assert done.returncode == 0, done.stdout.decode()
    types = [json.loads(line)["type"] for line in lines if line.startswith("{")]
    assert types[0] == "system"
    assert types[-1] == "result"
    assert lines[-1].startswith("\x1eN pushed 1 commit(s) to agentfarm/t1")
