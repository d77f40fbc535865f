"""Scale: many concurrent runs of a fast scripted agent, and what the control plane pays for them.

For each number of runs, a fresh server (a real ``agentfarm serve`` process) first sits idle,
then launches the runs; each agent emits one event every INTERVAL seconds stamped with its
emit time (``ts:``), until a common end time, so all of them overlap in a steady window. One
SSE viewer per run (``/api/runs/<id>/events``, httpx in this process) gives each event's delay
(arrival minus stamp: one machine, one clock); ``--viewers process`` moves them out of this
process into light raw-HTTP viewers of their own (bench/sse_viewers.py --api, two processes),
measuring the same thing. Figures for the steady window: control-plane
RSS (idle vs all running, per agent), CPU (% of one core), p50/p99 event delay, file
descriptors and threads of the server, the machine's available memory and load.

``--backend local`` runs the real local path (clone, monitor, bubblewrap sandbox as the
sandbox uid, spool, inotify) with bench/fake_claude.py as the agent; ``--backend fake`` runs the
package's fake backend in the server process, fed at the same rate. ``--variants`` compares
code trees side by side, interleaved run by run: ``base=DIR`` is another checkout's ``src``
(e.g. main before this change, extracted with ``git archive``), ``this`` is this checkout.
``--loopwatch`` samples the server's main thread (bench/loopwatch.py) and reports its event
loop's stalls over 20 ms in the steady window (how many, their total, what ran in them).

    .venv/bin/python bench/scale.py --backend local --runs 50,500 --interval 1
    .venv/bin/python bench/scale.py --backend local --runs 200 --interval 1000 \\
        --variants base=/tmp/base/src,this --rounds 3      # quiet agents: idle CPU
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, make_repo, median, rss_kib

from tests.integration.server import TOKEN, free_port

FAKE = ROOT / "bench" / "fake_claude.py"
VIEWERS = ROOT / "bench" / "sse_viewers.py"
VIEWER_PROCESSES = 2
STAMP = re.compile(r"ts:(\d+\.\d+)")
TERMINAL = {"succeeded", "failed", "stopped", "lost"}
#: Launching stops when the machine has less memory available than this (MiB): it is shared.
MEMORY_FLOOR_MIB = 3072


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def agents_pss_mib(data: Path) -> tuple[float, int]:
    """PSS of the monitors of this server's runs (their working directory is under ``data``)
    and what they started (sandbox, agent), and how many processes that is."""
    parents: dict[int, int] = {}
    monitors: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        if b"agentfarm.backends.local.monitor" in cmd:
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(str(data)):
                    monitors.append(int(entry))
            except OSError:
                continue
    tree = set(monitors)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(more)
        tree |= more
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024, len(tree)


# --- the server ---------------------------------------------------------------------------------
def serve_fake(data_dir: str, port: int, runs: int) -> None:
    """The real app on the package's fake backend, paced like bench/fake_claude.py."""
    import uvicorn

    from agentfarm.backends.base import ExitInfo
    from agentfarm.backends.fake import FakeBackend, _FakeRun
    from agentfarm.settings import Settings
    from agentfarm.web.app import create_app

    class PacedBackend(FakeBackend):
        async def _play(self, state: _FakeRun, steps: Any) -> None:
            found = re.search(r"scale ([0-9.]+) ([0-9.]+)", steps)
            interval, until = float(found.group(1)), float(found.group(2))  # type: ignore[union-attr]
            init = {"type": "system", "subtype": "init", "session_id": "s", "model": "m"}
            state.append("stdout", json.dumps(init).encode())
            i = 0
            while time.time() + interval < until:
                await asyncio.sleep(interval)
                block = {"type": "text", "text": f"step {i} ts:{time.time():.6f}"}
                line = {"type": "assistant", "message": {"id": f"m{i}", "content": [block]}}
                state.append("stdout", json.dumps(line).encode())
                i += 1
            await asyncio.sleep(max(0.0, until - time.time()))
            result = {"type": "result", "subtype": "success", "is_error": False, "result": "ok",
                      "num_turns": 1, "total_cost_usd": 0.0,
                      "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip
            state.append("stdout", json.dumps(result).encode())
            state.append("exit", exit=ExitInfo(exit_code=0))

    backend = PacedBackend(script=lambda run, _cmd: run.prompt)  # type: ignore[arg-type,return-value]
    settings = Settings.model_validate(
        {
            "data_dir": data_dir,
            "token": TOKEN,
            "anthropic_api_key": "sk-bench-0000000000",
            "claude_bin": "/bin/true",
            "max_concurrent_runs": runs + 10,
            "max_queued_runs": runs + 10,
        }
    )
    app = create_app(settings, backends={"local": backend})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False)


def start_server(
    backend: str, src: Path, data: Path, runs: int, loopwatch: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)]),
        "AGENTFARM_DATA_DIR": str(data),
        "AGENTFARM_PORT": str(port),
        "AGENTFARM_TOKEN": TOKEN,
        "AGENTFARM_CLAUDE_BIN": str(FAKE),
        "ANTHROPIC_API_KEY": "sk-bench-key-000000",
        "AGENTFARM_MAX_CONCURRENT_RUNS": str(runs + 10),
        "AGENTFARM_MAX_QUEUED_RUNS": str(runs + 10),
    }
    if backend == "fake":
        argv = [sys.executable, __file__, "--serve", str(data), str(port), str(runs)]
    else:
        argv = [sys.executable, "-c", "from agentfarm.cli.main import main; main()", "serve"]
    if loopwatch is not None:
        env["PYTHONPATH"] += os.pathsep + str(ROOT / "bench")
        hook = f"import loopwatch; loopwatch.install({str(loopwatch)!r}); "
        argv[2] = hook + argv[2] if backend != "fake" else argv[2]
        if backend == "fake":
            argv = [sys.executable, "-c", hook + "import runpy, sys; sys.argv = sys.argv[1:]; "
                    f"runpy.run_path({__file__!r}, run_name='__main__')", *argv[1:]]  # fmt: skip
    log = (data.parent / "server.log").open("ab")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            tail = (data.parent / "server.log").read_text(errors="replace")[-3000:]
            sys.exit(f"the server exited:\n{tail}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    sys.exit("the server did not come up")


# --- the client ---------------------------------------------------------------------------------
class Viewer:
    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []  # (emitted, arrived)
        self.started = asyncio.Event()
        self.status = ""


async def view(client: httpx.AsyncClient, run_id: str, viewer: Viewer) -> None:
    headers = {"Accept": "text/event-stream"}
    async with client.stream("GET", f"/api/runs/{run_id}/events", headers=headers) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            now = time.time()
            event = json.loads(line[5:])
            if event["type"].startswith("agent."):
                viewer.started.set()
            viewer.stamps += [(float(m), now) for m in STAMP.findall(line)]
            if event["type"] == "run.status" and event["data"].get("status") in TERMINAL:
                viewer.status = event["data"]["status"]
                return


async def measure(
    args: argparse.Namespace, src: Path, runs: int, lead: float, tmp: Path
) -> dict[str, Any]:
    data = tmp / "data"
    stalls_file = tmp / "stalls.jsonl" if args.loopwatch else None
    proc, url = start_server(args.backend, src, data, runs, stalls_file)
    run_ids: list[str] = []
    statuses_out: list[str] = []
    outside: list[asyncio.subprocess.Process] = []
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends them: a POST sent on
    # one it is closing fails ("Server disconnected without sending a response").
    limits = httpx.Limits(
        max_connections=runs + 50, max_keepalive_connections=runs + 50, keepalive_expiry=2.0
    )
    timeout = httpx.Timeout(lead + args.window + 600, connect=60)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with httpx.AsyncClient(
            base_url=url, headers=headers, limits=limits, timeout=timeout
        ) as client:
            sandbox = {"mode": "bwrap", "network": "none"}
            config = {"name": "scale", "repo": str(make_repo()), "prompt": "x",
                      "backend": {"type": "local", "sandbox": sandbox}}  # fmt: skip
            (await client.post("/api/configs", json=config)).raise_for_status()
            await asyncio.sleep(2)
            idle_rss = rss_kib(proc.pid)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(args.idle)
            idle_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
            until = time.time() + lead + args.window
            prompt = f"scale {args.interval} {until:.3f}"
            viewers: list[Viewer] = []
            watching: list[asyncio.Task[None]] = []
            post_seconds: list[float] = []
            gate = asyncio.Semaphore(16)  # launches in flight: POST latency grows with the runs

            async def launch_one() -> None:
                async with gate:
                    sent = time.monotonic()
                    response = await client.post(
                        "/api/runs", json={"config": "scale", "prompt": prompt}
                    )
                    post_seconds.append(time.monotonic() - sent)
                response.raise_for_status()
                run_ids.append(response.json()["id"])
                if args.viewers == "process":
                    return
                viewers.append(Viewer())
                watching.append(
                    asyncio.create_task(view(client, response.json()["id"], viewers[-1]))
                )

            launched = time.monotonic()
            for i in range(0, runs, 25):
                if mem_available_mib() < MEMORY_FLOOR_MIB:
                    print(f"  stopped launching at {i}: under {MEMORY_FLOOR_MIB} MiB available")
                    break
                await asyncio.gather(*(launch_one() for _ in range(min(25, runs - i))))
            if args.viewers == "process":
                for part in range(VIEWER_PROCESSES):
                    outside.append(await asyncio.create_subprocess_exec(
                        sys.executable, str(VIEWERS), "--api", url, TOKEN,
                        *run_ids[part::VIEWER_PROCESSES], stdout=asyncio.subprocess.PIPE,
                    ))  # fmt: skip
                await asyncio.sleep(max(1.0, until - args.window - time.time()))
            waits = [asyncio.ensure_future(v.started.wait()) for v in viewers]
            if waits:
                await asyncio.wait(waits, timeout=max(1.0, until - args.window - time.time()))
            for w in waits:
                w.cancel()
            all_running = time.monotonic() - launched
            running = sum(v.started.is_set() and not v.status for v in viewers) if viewers else -1
            begin = time.time() + 2
            await asyncio.sleep(2)
            agents_pss, agent_procs = await asyncio.to_thread(agents_pss_mib, data)
            rss: list[int] = []
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            fds = threads_n = 0
            low_memory = mem_available_mib()
            load = os.getloadavg()[0]
            stop_at = min(until - 1, time.time() + args.window)
            while time.time() < stop_at:
                rss.append(rss_kib(proc.pid))
                fds = max(fds, len(os.listdir(f"/proc/{proc.pid}/fd")))
                threads_n = max(threads_n, threads(proc.pid))
                low_memory = min(low_memory, mem_available_mib())
                load = max(load, os.getloadavg()[0])
                await asyncio.sleep(0.5)
            busy_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
            end = time.time() - 1
            await asyncio.wait_for(asyncio.gather(*watching), 600)
            for viewer_proc in outside:
                out, _ = await asyncio.wait_for(viewer_proc.communicate(), 600)
                found = json.loads(out)
                viewers.append(Viewer())
                viewers[-1].stamps = [(e, a) for e, a in found["stamps"]]
                # Each process ended all its streams at a terminal status, or says why not.
                statuses_out.extend(["succeeded"] * found["ended"])
                if found["errors"]:
                    print("  viewer errors:", found["errors"])
    finally:
        proc.terminate()
        proc.wait(30)
    delays = [arrived - emitted for v in viewers for emitted, arrived in v.stamps
              if begin <= emitted <= end]  # fmt: skip
    statuses = [v.status for v in viewers if not outside] + statuses_out
    stalls = []
    if stalls_file is not None and stalls_file.exists():
        for line in stalls_file.read_text().splitlines():
            stall = json.loads(line)
            if begin <= stall["start"] <= end:
                stalls.append(stall)
        if stalls:
            stalls_file.replace(Path(args.loopwatch) / f"stalls-{src.parent.name}-{runs}.jsonl")
    return {
        "runs": len(run_ids),
        "stalls_over_20ms": len(stalls),
        "stalled_ms_per_s": sum(s["ms"] for s in stalls) / max(1.0, end - begin),
        "stall_max_ms": max((s["ms"] for s in stalls), default=0.0),
        "running_in_window": running,
        "succeeded": statuses.count("succeeded"),
        "launch_s": all_running,
        "post_p50_ms": pct(post_seconds, 0.5) * 1000,
        "post_p99_ms": pct(post_seconds, 0.99) * 1000,
        "idle_rss_mib": idle_rss / 1024,
        "busy_rss_mib": median([float(x) for x in rss]) / 1024,
        "per_agent_mib": (median([float(x) for x in rss]) - idle_rss) / 1024 / max(1, len(run_ids)),
        "idle_cpu_pct": idle_cpu * 100,
        "busy_cpu_pct": busy_cpu * 100,
        "events": len(delays),
        "p50_ms": pct(delays, 0.5) * 1000,
        "p99_ms": pct(delays, 0.99) * 1000,
        "agents_pss_mib_per_run": agents_pss / max(1, len(run_ids)),
        "agent_procs": agent_procs,
        "fds": fds,
        "threads": threads_n,
        "mem_available_min_mib": low_memory,
        "load_max": load,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_fake(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["local", "fake"], default="local")
    parser.add_argument("--runs", default="50,500", help="comma-separated numbers of runs")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between events")
    parser.add_argument("--window", type=float, default=30.0, help="steady seconds measured")
    parser.add_argument("--lead", type=float, default=0.0, help="seconds for all to start")
    parser.add_argument("--idle", type=float, default=5.0, help="idle seconds measured first")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--viewers",
        choices=["inproc", "process"],
        default="inproc",
        help="SSE viewers in this process (httpx) or in processes of their own",
    )
    parser.add_argument(
        "--loopwatch",
        metavar="DIR",
        default="",
        help="sample the server's loop stalls; keep their details in DIR",
    )
    parser.add_argument("--variants", default="this", help="NAME=SRC_DIR or this, comma-separated")
    args = parser.parse_args()
    if args.loopwatch:  # where the stalls are kept: made here, not found missing at the end
        Path(args.loopwatch).mkdir(parents=True, exist_ok=True)
    variants = [
        (v, ROOT / "src") if v == "this" else (v.split("=")[0], Path(v.split("=", 1)[1]))
        for v in args.variants.split(",")
    ]
    counts = [int(n) for n in args.runs.split(",")]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    print(
        f"backend {args.backend}, an event every {args.interval} s per agent, "
        f"load {os.getloadavg()}"
    )
    for round_ in range(args.rounds):
        for runs in counts:
            for name, src in variants:  # interleaved: variant by variant within each round
                lead = args.lead or (20 + runs * (0.4 if args.backend == "local" else 0.02))
                tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
                try:
                    found = asyncio.run(measure(args, src, runs, lead, tmp))
                finally:
                    subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)
                results.setdefault((name, runs), []).append(found)
                print(f"round {round_ + 1} {name} {runs} runs: " + json.dumps(found, default=str))
    print("\nmedians over rounds:")
    keys = ["runs", "stalls_over_20ms", "stalled_ms_per_s", "stall_max_ms",
            "running_in_window", "succeeded", "launch_s", "post_p50_ms", "post_p99_ms",
            "idle_rss_mib", "busy_rss_mib", "per_agent_mib",
            "idle_cpu_pct", "busy_cpu_pct", "events", "p50_ms", "p99_ms",
            "agents_pss_mib_per_run", "agent_procs", "fds", "threads",
            "mem_available_min_mib", "load_max"]  # fmt: skip
    print("| variant | " + " | ".join(keys) + " |")
    for (name, runs), found in results.items():
        row = [median([float(f[k]) for f in found]) for k in keys]
        print(f"| {name} ({runs}) | " + " | ".join(f"{x:.1f}" for x in row) + " |")


if __name__ == "__main__":
    main()
