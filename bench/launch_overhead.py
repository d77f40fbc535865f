"""Launch overhead: POST /api/runs -> first agent event, against starting the same Claude Code
command directly, interleaved in one run (this machine is shared and noisy). Runs go through a
config per network policy (`allowlist`, the default, with its egress proxy, and `open`, the
host's network), and through two servers side by side: one with the local backend's pools
(ready clones, idle monitors; the defaults) and one with both pools off.

    .venv/bin/python bench/launch_overhead.py [--runs 15] [--pools on,off] [--settle 3]
                                              [--baseline /path/to/other/src]

With ``--baseline`` each pool setting also gets a server running that source tree's code
(``base-on``, ``base-off``), timed in the same interleaved rounds: this code against another.

Between runs the script waits ``--settle`` seconds, so that a pool's background refill (a
clone, a monitor's start) is done before the next variant is timed, and does not slow it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from common import FakeAnthropic, Server, claude_bin, make_repo, median

from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.domain import models


def direct(binary: str, base_url: str, prompt: str, repo: Path, uid: int | None = None) -> float:
    """Seconds from spawn to the first stdout line of the CLI, with no sandbox, in a fresh
    clone (the CLI inspects the git repository it starts in, as it does under agentfarm); with
    ``uid``, started as that user (its own full clone and home), as the sandbox starts it."""
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
    share = ["--shared"] if uid is None else ["--no-hardlinks"]  # the source is root's
    subprocess.run(["git", "clone", "-q", *share, str(repo), str(workspace)], check=True)
    if uid is not None:
        for path in [home, *(str(p) for p in Path(home).rglob("*"))]:
            os.lchown(path, uid, uid)
    started = time.perf_counter()
    proc = subprocess.Popen(
        command.argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=workspace,
        **({"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}),  # type: ignore[arg-type]
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


#: Server settings per ``--pools`` name: both pools (the defaults), none, or one of them.
POOLS = {
    "on": {},
    "off": {"AGENTFARM_LOCAL_CLONE_POOL": "0", "AGENTFARM_LOCAL_MONITOR_POOL": "0"},
    "clones": {"AGENTFARM_LOCAL_MONITOR_POOL": "0"},
    "monitors": {"AGENTFARM_LOCAL_CLONE_POOL": "0"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--networks", default="allowlist,open", help="comma-separated")
    parser.add_argument("--pools", default="on,off", help="comma-separated: " + ", ".join(POOLS))
    # Past the pools' refill (``clone_pool.REFILL_DELAY``, 1 s after a take, then a clone, a
    # monitor and its egress proxy at the lowest priority), so it never overlaps a timed run.
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between runs")
    parser.add_argument("--baseline", type=Path, help="another source tree to compare with")
    parser.add_argument(
        "--direct-uid",
        type=int,
        help="also time the direct CLI started as this non-root uid (as root only), as the "
        "sandbox runs it",
    )
    args = parser.parse_args()
    networks = args.networks.split(",")
    pools = args.pools.split(",")
    # Server label -> (pool setting, PYTHONPATH of the code it runs, or None: this code).
    labels: dict[str, tuple[str, str | None]] = {pool: (pool, None) for pool in pools}
    if args.baseline is not None:
        base = os.pathsep.join(
            p for p in (str(args.baseline.resolve()), os.environ.get("PYTHONPATH")) if p
        )
        labels |= {f"base-{pool}": (pool, base) for pool in pools}
    variants = [(label, network) for label in labels for network in networks]
    if unknown := set(pools) - POOLS.keys():
        parser.error(
            f"unknown --pools {', '.join(sorted(unknown))}: choose from {', '.join(POOLS)}"
        )
    binary = claude_bin()
    repo = make_repo()
    prompt = "[scenario:hello] say hello"
    loads: list[float] = []
    with FakeAnthropic().start() as model, ExitStack() as stack:
        servers: dict[str, tuple[Server, httpx.Client]] = {}
        for label, (pool, pythonpath) in labels.items():
            data = Path(tempfile.mkdtemp(prefix=f"bench-data-{label}-"))
            env = {
                "AGENTFARM_CLAUDE_BIN": binary,
                "ANTHROPIC_BASE_URL": model.base_url,
                "ANTHROPIC_API_KEY": "sk-bench-key-000000",
                **POOLS[pool],
                **({"PYTHONPATH": pythonpath} if pythonpath else {}),
            }
            srv = Server(data, env, data.parent / f"server-{label}.log").start()
            stack.callback(srv.stop)
            client = stack.enter_context(srv.client())
            servers[label] = srv, client
            for network in networks:
                body = {"name": f"bench-{network}", "repo": str(repo), "prompt": prompt}
                body["backend"] = {"type": "local", "sandbox": {"network": network}}
                client.post("/api/configs", json=body).raise_for_status()
                via_agentfarm(srv, client, prompt, f"bench-{network}")  # warm-up (fills pools)
        direct(binary, model.base_url, prompt, repo)
        plain: list[float] = []
        as_uid: list[float] = []
        if args.direct_uid is not None:
            direct(binary, model.base_url, prompt, repo, args.direct_uid)
        farm: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        for _ in range(args.runs):
            loads.append(os.getloadavg()[0])
            time.sleep(args.settle)
            plain.append(direct(binary, model.base_url, prompt, repo))
            if args.direct_uid is not None:
                time.sleep(args.settle)
                as_uid.append(direct(binary, model.base_url, prompt, repo, args.direct_uid))
            for pool, network in variants:
                time.sleep(args.settle)
                srv, client = servers[pool]
                farm[pool, network].append(via_agentfarm(srv, client, prompt, f"bench-{network}"))
    p = median(plain)
    print(f"runs: {args.runs} each, interleaved; cores: {os.cpu_count()}; ", end="")
    print(f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}, median {median(loads):.1f}")
    print(f"direct CLI, spawn -> first event:       median {p * 1000:7.1f} ms")
    if as_uid:
        u = median(as_uid)
        print(
            f"direct CLI as uid {args.direct_uid}, spawn -> first event: median {u * 1000:7.1f} ms"
        )
        print(f"  the uid's own cost: {(u - p) * 1000:+.1f} ms at the median; ratio {u / p:.2f}x")
    for pool, network in variants:
        f = median(farm[pool, network])
        print(f"agentfarm ({network}, pools {pool}), POST /api/runs -> first event: ", end="")
        print(f"median {f * 1000:7.1f} ms")
        print(f"  overhead: {(f - p) * 1000:.1f} ms at the median; ratio {f / p:.2f}x")
        if as_uid:
            print(f"  against the CLI as uid {args.direct_uid}: ratio {f / median(as_uid):.2f}x")
    for pool in pools:
        if (pool, "allowlist") in farm and (pool, "open") in farm:
            a, o = median(farm[pool, "allowlist"]), median(farm[pool, "open"])
            print(
                f"pools {pool}: allowlist vs open: {(a - o) * 1000:+.1f} ms at the median; ", end=""
            )
            print(f"ratio {a / o:.2f}x")
    if "on" in pools and "off" in pools:
        for network in networks:
            on, off = median(farm["on", network]), median(farm["off", network])
            print(
                f"{network}: pools on vs off: {(on - off) * 1000:+.1f} ms at the median; ", end=""
            )
            print(f"ratio {on / off:.2f}x")
    for pool in pools if args.baseline is not None else ():
        for network in networks:
            this, base = median(farm[pool, network]), median(farm[f"base-{pool}", network])
            print(
                f"{network}, pools {pool}: this vs baseline: {(this - base) * 1000:+.1f} ms "
                f"at the median; ratio {this / base:.2f}x"
            )


if __name__ == "__main__":
    main()
