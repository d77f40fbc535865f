"""The local backend's own launch path, pools on and off side by side: from ``launch()`` to
the agent's first stdout line in the spool, for a trivial agent (``/usr/bin/echo``), so that
the figure is the backend's overhead alone (no model, no CLI start, no HTTP). Two backends in
one process, one with both pools (the default sizes) and one with none, interleaved run by
run, with ``--settle`` seconds between runs so that a refill never overlaps a timed launch.

    .venv/bin/python bench/local_launch.py [--runs 15] [--network allowlist] [--pools on,off]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import make_repo, median

from agentfarm.backends.local.backend import LocalBackend
from agentfarm.domain import backend_config, models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings

#: Backend settings per ``--pools`` name: both pools (the defaults), none, or one of them.
POOLS = {
    "on": {},
    "off": {"local_clone_pool": 0, "local_monitor_pool": 0},
    "clones": {"local_monitor_pool": 0},
    "monitors": {"local_clone_pool": 0},
}


async def once(backend: LocalBackend, repo: Path, network: str) -> tuple[float, float]:
    """Seconds to launch() returning and to the agent's first stdout line."""
    box = backend_config.SandboxSpec(network=network)  # type: ignore[arg-type]
    spec = models.AgentSpec(repo=str(repo), backend=backend_config.LocalSpec(sandbox=box))
    run = models.Run(spec=spec)
    command = AgentCommand(argv=["/usr/bin/echo", "hello"], env={})
    started = time.perf_counter()
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, command, {}))
    launched = time.perf_counter() - started
    first = None
    async for record in handle.records(0):
        if record.kind == "stdout" and first is None:
            first = time.perf_counter() - started
    await backend.cleanup(run)
    if first is None:
        raise RuntimeError(f"run {run.id}: the agent printed nothing")
    return launched, first


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--network", default="allowlist")
    parser.add_argument("--settle", type=float, default=1.5)
    parser.add_argument("--pools", default="on,off", help="comma-separated: " + ", ".join(POOLS))
    args = parser.parse_args()
    chosen = args.pools.split(",")
    if unknown := set(chosen) - POOLS.keys():
        parser.error(
            f"unknown --pools {', '.join(sorted(unknown))}: choose from {', '.join(POOLS)}"
        )
    repo = make_repo()
    base = Path(tempfile.mkdtemp(prefix="bench-local-", dir="/var/tmp"))
    backends = {}
    for name in chosen:
        sizes = POOLS[name]
        backends[name] = LocalBackend(Settings(data_dir=base / name, **sizes))  # type: ignore[arg-type]
        await backends[name].astart()
    try:
        for backend in backends.values():
            await once(backend, repo, args.network)  # warm-up (fills the pools)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in backends}
        loads = []
        for _ in range(args.runs):
            loads.append(os.getloadavg()[0])
            for name, backend in backends.items():
                await asyncio.sleep(args.settle)
                figures[name].append(await once(backend, repo, args.network))
    finally:
        for backend in backends.values():
            await backend.aclose()
        shutil.rmtree(base, ignore_errors=True)
    print(f"runs: {args.runs} each, interleaved; network {args.network}; cores: {os.cpu_count()};")
    print(f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}, median {median(loads):.1f}")
    medians = {}
    for name, values in figures.items():
        launched = median([v[0] for v in values]) * 1000
        first = median([v[1] for v in values]) * 1000
        medians[name] = first
        print(f"pools {name:3}: launch() {launched:6.1f} ms, to the first line {first:6.1f} ms")
    if "off" in medians:
        off = medians["off"]
        for name, first in medians.items():
            if name != "off":
                print(f"to the first line, pools {name} vs off: {first - off:+.1f} ms; ", end="")
                print(f"ratio {first / off:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
