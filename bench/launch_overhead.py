"""Launch overhead: POST /api/runs -> first agent event, against starting the same Claude Code
command directly, interleaved in one run (this machine is shared and noisy). Runs go through a
config per network policy (`allowlist`, the default, with its egress proxy and bridge, and
`open`, the host's network), side by side.

    .venv/bin/python bench/launch_overhead.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from common import FakeAnthropic, Server, claude_bin, make_repo, median

from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.domain import models


def direct(binary: str, base_url: str, prompt: str, repo: Path) -> float:
    """Seconds from spawn to the first stdout line of the CLI, with no sandbox, in a fresh
    clone (the CLI inspects the git repository it starts in, as it does under agentfarm)."""
    spec = models.AgentSpec(repo="/unused", prompt=prompt)
    command = ClaudeAdapter().build_command(spec, binary=binary)
    home = tempfile.mkdtemp(prefix="bench-home-")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "IS_SANDBOX": "1",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-bench-key-000000",
        **command.env,
    }
    workspace = Path(home) / "workspace"
    subprocess.run(["git", "clone", "-q", "--shared", str(repo), str(workspace)], check=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        command.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=workspace
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command.stdin)
    proc.stdin.flush()
    proc.stdout.readline()
    elapsed = time.perf_counter() - started
    proc.stdin.close()
    proc.stdout.read()
    proc.wait()
    return elapsed


def via_agentfarm(srv: Server, client: httpx.Client, prompt: str, config: str) -> float:
    """Seconds from POST /api/runs to the first agent.* event seen on the SSE stream."""
    started = time.perf_counter()
    run = client.post("/api/runs", json={"config": config, "prompt": prompt}).json()
    with client.stream(
        "GET", f"/api/runs/{run['id']}/events", headers={"Accept": "text/event-stream"}
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["type"].startswith("agent."):
                elapsed = time.perf_counter() - started
                break
        else:
            raise RuntimeError(f"run {run['id']} produced no agent event")
    srv.wait_status(run["id"], {"succeeded", "failed", "stopped", "lost"})
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--networks", default="allowlist,open", help="comma-separated")
    args = parser.parse_args()
    networks = args.networks.split(",")
    binary = claude_bin()
    repo = make_repo()
    prompt = "[scenario:hello] say hello"
    with FakeAnthropic().start() as model:
        data = Path(tempfile.mkdtemp(prefix="bench-data-"))
        srv = Server(
            data,
            {
                "AGENTFARM_CLAUDE_BIN": binary,
                "ANTHROPIC_BASE_URL": model.base_url,
                "ANTHROPIC_API_KEY": "sk-bench-key-000000",
            },
            data.parent / "server.log",
        ).start()
        try:
            with srv.client() as client:
                for network in networks:
                    body = {"name": f"bench-{network}", "repo": str(repo), "prompt": prompt}
                    body["backend"] = {"type": "local", "sandbox": {"network": network}}
                    client.post("/api/configs", json=body).raise_for_status()
                    via_agentfarm(srv, client, prompt, f"bench-{network}")  # warm-up
                direct(binary, model.base_url, prompt, repo)
                plain: list[float] = []
                farm: dict[str, list[float]] = {n: [] for n in networks}
                for _ in range(args.runs):
                    plain.append(direct(binary, model.base_url, prompt, repo))
                    for network in networks:
                        farm[network].append(via_agentfarm(srv, client, prompt, f"bench-{network}"))
        finally:
            srv.stop()
    p = median(plain)
    print(f"runs: {args.runs} each, interleaved; cores: {os.cpu_count()}")
    print(f"direct CLI, spawn -> first event:       median {p * 1000:7.1f} ms")
    for network in networks:
        f = median(farm[network])
        print(f"agentfarm ({network}), POST /api/runs -> first event: median {f * 1000:7.1f} ms")
        print(f"  overhead: {(f - p) * 1000:.1f} ms at the median; ratio {f / p:.2f}x")
    if "allowlist" in farm and "open" in farm:
        a, o = median(farm["allowlist"]), median(farm["open"])
        print(f"allowlist vs open: {(a - o) * 1000:+.1f} ms at the median; ratio {a / o:.2f}x")


if __name__ == "__main__":
    main()
