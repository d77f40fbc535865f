"""Event ingest: events per second persisted and served, for one run and for N concurrent runs
of a fast scripted agent (bench/fake_claude.py), and control-plane RSS per running agent.

    .venv/bin/python bench/event_ingest.py [--events 2000] [--concurrent 20] [--repeats 1]
        [--baseline OTHER/src] [--profile DIR]

Two rates per batch of runs:

- *streaming*: the rate of the pipeline once the agent talks, launch excluded. Persisted:
  agent events over the time from the first agent event's timestamp (stamped when the control
  plane parsed it) to the run's terminal event's. Served: the same events over the time from
  the SSE client's receipt of the first agent event to its receipt of the terminal event.
- *from POST*: all of a batch's events over the time from its first ``POST /api/runs`` to its
  last terminal event received (launch, clone and sandbox included).

And the server's CPU time per event (all its threads, over the same span as *from POST*),
which depends less on what else the machine runs than a rate does.

``--baseline`` starts a second server on another source tree (``PYTHONPATH``: e.g. a checkout
of main) and measures both side by side, alternating which goes first run by run. ``--profile``
runs this tree's server under cProfile and writes the profile of its event loop thread there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common import ROOT, Server, make_repo, median, rss_kib

FAKE = ROOT / "bench" / "fake_claude.py"
TERMINAL = ("succeeded", "failed", "stopped", "lost")
#: ``agentfarm serve`` under cProfile. uvicorn re-raises the SIGTERM it caught once it has shut
#: down, so the profile is written by a handler of that signal (``-m cProfile`` never would).
PROFILED = """
import cProfile, signal, sys
from agentfarm.cli.main import main
profile, out = cProfile.Profile(), sys.argv[1]
def done(*_):
    profile.disable()
    profile.dump_stats(out)
    raise SystemExit(0)
signal.signal(signal.SIGTERM, done)
sys.argv[1:] = ["serve"]
profile.enable()
main()
"""


@dataclass
class Served:
    count: int = 0
    agent_events: int = 0
    first_agent: float | None = None
    terminal: float | None = None


def serve_all(srv: Server, run_id: str, out: dict[str, Served]) -> None:
    """Follow the run's SSE stream to its terminal event. Lean on purpose (the client shares
    the machine with the server): it parses only the events it needs to recognise."""
    seen = out[run_id] = Served()
    pending = b""
    with srv.client() as client, client.stream(
        "GET", f"/api/runs/{run_id}/events", headers={"Accept": "text/event-stream"},
        timeout=600,
    ) as response:  # fmt: skip
        for chunk in response.iter_raw():
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                seen.count += 1
                if line.startswith(b'data: {"type":"agent.'):
                    seen.agent_events += 1
                    if seen.first_agent is None:
                        seen.first_agent = time.time()
                elif b'"type":"run.status"' in line:
                    event = json.loads(line[5:])
                    if event["data"]["status"] in TERMINAL:
                        seen.terminal = time.time()
                        return


def stored_events(client: Any, run_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = client.get(
            f"/api/runs/{run_id}/events",
            params={"after": found[-1]["seq"] if found else 0, "limit": 5000},
        ).json()
        found += page
        if len(page) < 5000:
            return found


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


@dataclass
class Figures:
    events: int
    persisted: float  # streaming, ev/s
    served: float  # streaming, ev/s
    from_post: float  # ev/s
    #: The server's CPU time (all its threads) per event, microseconds: from the first POST to
    #: the last terminal event served. Less at the mercy of the machine's load than a rate.
    cpu_us: float
    #: The longest ``POST /api/runs`` of the batch, seconds.
    slowest_post: float


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch(srv: Server, n: int, sample_rss: list[int]) -> Figures:
    """Launch ``n`` runs at once (a thread each: its ``POST``, then its SSE stream to the end)."""
    assert srv.proc is not None
    cpu_before = cpu_seconds(srv.proc.pid)
    ids: list[str] = []
    posts: list[float] = []
    served: dict[str, Served] = {}

    def launch_and_follow() -> None:
        with srv.client() as c:
            sent = time.time()
            run_id = c.post("/api/runs", json={"config": "ingest"}).json()["id"]
            posts.append(time.time() - sent)
        ids.append(run_id)
        serve_all(srv, run_id, served)

    with srv.client() as client:
        started = time.time()
        threads = [threading.Thread(target=launch_and_follow) for _ in range(n)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            sample_rss.append(rss_kib(srv.proc.pid))
            time.sleep(0.05)
        for t in threads:
            t.join()
        cpu = cpu_seconds(srv.proc.pid) - cpu_before
        total = agent = 0
        first_ts, last_ts = float("inf"), 0.0
        for run_id in ids:
            run = srv.wait_status(run_id, set(TERMINAL))
            assert run["status"] == "succeeded", run
            events = stored_events(client, run_id)
            if [e["seq"] for e in events] != list(range(1, len(events) + 1)):
                raise SystemExit(f"run {run_id}: its events are not numbered 1..n")
            if served[run_id].count != len(events):
                raise SystemExit(
                    f"run {run_id}: {len(events)} events stored, {served[run_id].count} served"
                )
            total += len(events)
            agents = [e for e in events if e["type"].startswith("agent.")]
            agent += len(agents)
            first_ts = min(first_ts, _ts(agents[0]))
            last_ts = max(last_ts, _ts(events[-1]))
    first_served = min(s.first_agent or float("inf") for s in served.values())
    last_served = max(s.terminal or 0.0 for s in served.values())
    return Figures(
        events=total,
        persisted=agent / (last_ts - first_ts),
        served=agent / (last_served - first_served),
        from_post=total / (last_served - started),
        cpu_us=cpu * 1e6 / total,
        slowest_post=max(posts),
    )


@dataclass
class Variant:
    name: str
    server: Server
    idle_kib: int = 0
    one: list[Figures] = field(default_factory=list)
    many: list[Figures] = field(default_factory=list)
    rss_one: list[int] = field(default_factory=list)
    rss_many: list[int] = field(default_factory=list)


def start(
    name: str, env: dict[str, str], events: int, concurrent: int, profile: Path | None
) -> Variant:
    data = Path(tempfile.mkdtemp(prefix=f"bench-data-{name}-"))
    argv = None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-c", PROFILED, str(profile / f"{name}.prof")]
    srv = Server(
        data,
        {
            "AGENTFARM_CLAUDE_BIN": str(FAKE),
            "ANTHROPIC_API_KEY": "sk-bench-key-000000",
            "AGENTFARM_MAX_CONCURRENT_RUNS": str(concurrent),
            **env,
        },
        data.parent / f"server-{name}.log",
        argv=argv,
    ).start()
    with srv.client() as client:
        client.post(
            "/api/configs",
            json={
                "name": "ingest",
                "repo": str(make_repo()),
                "prompt": "go",
                "env": {"BENCH_EVENTS": str(events)},
            },
        ).raise_for_status()
    assert srv.proc is not None
    return Variant(name, srv, idle_kib=rss_kib(srv.proc.pid))


def _report(name: str, runs: int, f: Figures) -> None:
    print(
        f"  {name}, {runs} run(s): persisted {f.persisted:,.0f}, served {f.served:,.0f}, "
        f"from POST {f.from_post:,.0f} ev/s, server CPU {f.cpu_us:.0f} us/event, "
        f"slowest POST {f.slowest_post:.2f} s; {load()}",
        file=sys.stderr,
    )


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _med(figures: list[Figures], name: str) -> float:
    return median([getattr(f, name) for f in figures])


def row(label: str, figures: list[Figures]) -> str:
    return (
        f"{label:<22} {figures[0].events:>8,} {_med(figures, 'persisted'):>12,.0f}"
        f" {_med(figures, 'served'):>12,.0f} {_med(figures, 'from_post'):>12,.0f}"
        f" {_med(figures, 'cpu_us'):>10,.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000, help="agent lines per run")
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="batches per variant (medians)")
    parser.add_argument("--baseline", type=Path, help="another source tree to compare with")
    parser.add_argument("--profile", type=Path, help="cProfile this tree's server into DIR")
    args = parser.parse_args()
    variants = [start("this", {}, args.events, args.concurrent, args.profile)]
    if args.baseline is not None:
        pythonpath = os.pathsep.join(
            p for p in (str(args.baseline.resolve()), os.environ.get("PYTHONPATH")) if p
        )
        variants.append(
            start("baseline", {"PYTHONPATH": pythonpath}, args.events, args.concurrent, None)
        )
    loads = [load()]
    try:
        for repeat in range(args.repeats):
            order = variants if repeat % 2 == 0 else variants[::-1]
            for v in order:
                v.one.append(batch(v.server, 1, v.rss_one))
                _report(v.name, 1, v.one[-1])
            for v in order:
                v.many.append(batch(v.server, args.concurrent, v.rss_many))
                _report(v.name, args.concurrent, v.many[-1])
            loads.append(load())
            print(f"repeat {repeat + 1}/{args.repeats} done; {loads[-1]}", file=sys.stderr)
    finally:
        for v in variants:
            v.server.stop()
    print(f"agent lines per run: {args.events} (fast scripted agent); {args.repeats} repeat(s),")
    print("medians; rates in events/s (streaming: from the first agent event; see the docstring)")
    print(
        f"{'variant, runs':<22} {'events':>8} {'persisted':>12} {'served':>12} {'from POST':>12}"
        f" {'CPU us/ev':>10}"
    )
    for v in variants:
        print(row(f"{v.name}, 1 run", v.one))
        print(row(f"{v.name}, {args.concurrent} runs", v.many))
    if len(variants) == 2:
        this, base = variants
        for label, a, b in (
            ("1 run", this.one, base.one),
            (f"{args.concurrent} runs", this.many, base.many),
        ):
            ratios = ", ".join(
                f"{name} {_med(a, name) / _med(b, name):.2f}x"
                for name in ("persisted", "served", "from_post", "cpu_us")
            )
            print(f"this / baseline, {label}: {ratios}")
    for v in variants:
        peak = max(v.rss_many) if v.rss_many else v.idle_kib
        print(
            f"{v.name}: control-plane RSS idle {v.idle_kib / 1024:.1f} MiB, peak with "
            f"{args.concurrent} agents {peak / 1024:.1f} MiB -> "
            f"{(peak - v.idle_kib) / 1024 / args.concurrent:.2f} MiB per agent"
        )
    print("load:", *loads, sep="\n  ")


if __name__ == "__main__":
    main()
