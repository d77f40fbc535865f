"""End to end through a real server process, the CLI, the real Claude Code CLI against the
scripted fake model, real git and real bubblewrap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api as fake
from tests.integration.conftest import git
from tests.integration.server import Server, events, post_run

pytestmark = pytest.mark.integration


@pytest.fixture
def server(
    claude_bin: str, fake_anthropic: fake.FakeAnthropic, serve: Callable[[dict[str, str]], Server]
) -> Server:
    return serve(
        {
            "AGENTFARM_CLAUDE_BIN": claude_bin,
            "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-e2e-secret-value",
            "AGENTFARM_STOP_GRACE_SECONDS": "3",
        }
    )


def create_config(srv: Server, source: Path, name: str, prompt: str) -> None:
    with srv.client() as c:
        response = c.post(
            "/api/configs",
            json={
                "name": name,
                "repo": str(source),
                "prompt": prompt,
                "env": {"CLAUDE_CODE_MAX_RETRIES": "0"},
            },
        )
        assert response.status_code == 201, response.text


def launch(srv: Server, config: str, prompt: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"config": config}
    if prompt is not None:
        body["prompt"] = prompt
    return post_run(srv, body)


def test_cli_run_commits_on_its_branch(server: Server, source: Path) -> None:
    prompt = f"{fake.marker('write-and-commit')} add a hello file"
    result = server.cli(
        "config", "add", "writer", "--repo", str(source), "--prompt", prompt,
        "--env", "CLAUDE_CODE_MAX_RETRIES=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = server.cli("run", "writer")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.split()[1]
    assert "succeeded" in result.stdout
    assert "→ Write" in result.stdout and "→ Bash" in result.stdout
    assert "sk-ant-e2e-secret-value" not in result.stdout + result.stderr
    run = server.wait_status(run_id, {"succeeded"}, timeout=5)
    assert run["cost_usd"] > 0 and run["num_turns"] >= 2 and run["usage"]["output_tokens"] > 0
    log = git(source, "log", "--format=%s", f"agentfarm/{run_id}")
    assert log.splitlines()[-1] == "initial" and len(log.splitlines()) == 2
    assert git(source, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    # readable logs, JSON logs and the listing agree
    assert run_id in server.cli("ls").stdout
    listed = json.loads(server.cli("ls", "--json").stdout)
    assert listed[0]["id"] == run_id
    lines = server.cli("logs", run_id, "--json").stdout.splitlines()
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, len(lines) + 1))
    # an SSE client sees every stored event, in order
    stored = events(server, run_id)
    assert list(server.iter_sse(run_id)) == stored
    body = json.dumps(stored)
    assert "sk-ant-e2e-secret-value" not in body
    assert "sk-ant-e2e-secret-value" not in (server.log.read_text())
    workspace = server.data_dir / "runs" / run_id / "workspace"
    if workspace.exists():
        assert "sk-ant-e2e-secret-value" not in (workspace / ".git" / "config").read_text()


def test_stop_ends_a_sleeping_agent(server: Server, source: Path) -> None:
    create_config(server, source, "sleeper", f"{fake.marker('sleep')} wait")
    run = launch(server, "sleeper")
    deadline = time.monotonic() + 60
    while not any(e["type"] == "agent.tool_call" for e in events(server, run["id"])):
        assert time.monotonic() < deadline, events(server, run["id"])
        time.sleep(0.1)
    started = time.monotonic()
    result = server.cli("stop", run["id"])
    assert result.returncode == 0, result.stderr
    done = server.wait_status(run["id"], {"stopped", "failed", "succeeded"}, timeout=30)
    elapsed = time.monotonic() - started
    assert done["status"] == "stopped", done
    assert elapsed < 3 + 5
    leftovers = subprocess.run(
        ["pgrep", "-f", f"runs/{run['id']}"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == []
    assert (
        subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, check=False).returncode
        == 1
    )


def test_server_kill9_midrun_then_restart(
    server: Server, source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    marker = fake_anthropic.register(
        "slow-commit",
        [
            fake.tool_use("Write", {"file_path": "slow.txt", "content": "slow\n"}, delay=1.5),
            fake.tool_use(
                "Bash",
                {"command": "git add -A && git commit -qm 'slow work'", "description": "c"},
                delay=1.5,
            ),
            fake.text("committed", delay=1.0),
        ],
    )
    create_config(server, source, "slow", f"{marker} go slowly")
    run = launch(server, "slow")
    server.wait_status(run["id"], {"running"}, timeout=30)
    time.sleep(2.0)
    server.kill()
    time.sleep(1.0)
    server.start()
    done = server.wait_status(run["id"], {"succeeded", "failed", "lost"}, timeout=60)
    assert done["status"] == "succeeded", done
    stored = events(server, run["id"])
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    kinds = [e["type"] for e in stored]
    assert kinds.count("agent.init") == 1 and kinds.count("agent.result") == 1
    calls = [e["data"]["id"] for e in stored if e["type"] == "agent.tool_call"]
    assert len(calls) == len(set(calls)) == 2
    assert "slow work" in git(source, "log", "--format=%s", f"agentfarm/{run['id']}")


def test_model_api_error_fails_the_run(server: Server, source: Path) -> None:
    create_config(server, source, "broken", f"{fake.marker('api-error')} anything")
    run = launch(server, "broken")
    done = server.wait_status(run["id"], {"succeeded", "failed"}, timeout=60)
    assert done["status"] == "failed"
    assert "500" in done["error"] or "api" in done["error"].lower()


def test_sandbox_hides_the_host(
    server: Server, source: Path, fake_anthropic: fake.FakeAnthropic, tmp_path: Path
) -> None:
    other = server.data_dir / "runs" / "000000000000" / "workspace"
    other.mkdir(parents=True)
    (other / "theirs.txt").write_text("other run's file\n")
    probe = (
        f"cat {server.data_dir}/token; echo data=$?; "
        f"cat {other}/theirs.txt; echo other=$?; "
        "ls /root; echo root=$?; "
        "cat /etc/shadow; echo shadow=$?; "
        "echo procs=$(ls /proc | grep -c '^[0-9]'); id -u"
    )
    marker = fake_anthropic.register(
        "probe",
        [fake.tool_use("Bash", {"command": probe, "description": "probe"}), fake.text("ok")],
    )
    create_config(server, source, "probe", f"{marker} look around")
    run = launch(server, "probe")
    server.wait_status(run["id"], {"succeeded", "failed"}, timeout=60)
    result = next(e for e in events(server, run["id"]) if e["type"] == "agent.tool_result")
    out = result["data"]["content"]
    assert "other run's file" not in out
    for tag in ("data", "other", "root", "shadow"):
        assert f"{tag}=0" not in out, out
    procs = int(out.split("procs=")[1].split()[0])
    assert procs < 15, out
    assert out.strip().splitlines()[-1] != "0"
    token = (
        (server.data_dir / "token").read_text().strip()
        if (server.data_dir / "token").exists()
        else None
    )
    if token:
        assert token not in out
    assert os.getuid() == 0 or out.strip().splitlines()[-1] == str(os.getuid())


def test_cli_errors_are_one_clear_line(server: Server, source: Path, tmp_path: Path) -> None:
    wrong = server.cli_env | {"AGENTFARM_TOKEN": "wrong-token"}
    agentfarm = str(Path(sys.executable).with_name("agentfarm"))
    for args, env, expected in (
        (["ls"], wrong, "rejected the API token"),
        (["logs", "0123456789ab"], server.cli_env, "0123456789ab"),
        (["run", "nope"], server.cli_env, "no config named 'nope'"),
        (["ls"], server.cli_env | {"AGENTFARM_URL": "http://127.0.0.1:9"}, "cannot reach"),
    ):
        done = subprocess.run(
            [agentfarm, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
        assert expected in lines[0], lines[0]
    # secrets go in on stdin and never come back out; configs load from YAML files
    done = server.cli("secret", "set", "GH_TOKEN", input="ghp-secret-value-123\n")
    assert done.returncode == 0, done.stderr
    listed = server.cli("secret", "ls", "--json")
    assert json.loads(listed.stdout) == ["GH_TOKEN"]
    assert "ghp-secret-value-123" not in listed.stdout
    spec = tmp_path / "cfg.yaml"
    spec.write_text(f"name: from-file\nrepo: {source}\nprompt: hello\nmax_turns: 3\n")
    assert server.cli("config", "add", "--file", str(spec)).returncode == 0
    shown = json.loads(server.cli("config", "show", "from-file").stdout)
    assert shown["max_turns"] == 3
    bad = server.cli("config", "add", "bad name", "--repo", str(source))
    assert bad.returncode == 1 and "name" in bad.stderr
    # the network policy and the egress list from flags
    args = ["config", "add", "net", "--repo", str(source), "--network", "open"]
    assert server.cli(*args, "--egress", "@pypi", "--egress", "x.org:81").returncode == 0
    sandbox = json.loads(server.cli("config", "show", "net").stdout)["backend"]["sandbox"]
    assert sandbox["network"] == "open" and sandbox["egress"] == ["@pypi", "x.org:81"]
    bad = server.cli("config", "add", "net2", "--repo", str(source), "--egress", "@nope")
    assert bad.returncode == 1 and "unknown group" in bad.stderr
