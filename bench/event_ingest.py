"""Event ingest: events per second persisted and served, for one run and for 20 concurrent runs
of a fast scripted agent (bench/fake_claude.py), and control-plane RSS per running agent.

    .venv/bin/python bench/event_ingest.py [--events 2000] [--concurrent 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, Server, make_repo, median, rss_kib

FAKE = ROOT / "bench" / "fake_claude.py"


def serve_all(srv: Server, run_id: str, out: dict[str, float]) -> None:
    count = 0
    with srv.client() as client, client.stream(
        "GET", f"/api/runs/{run_id}/events", headers={"Accept": "text/event-stream"},
        timeout=300,
    ) as response:  # fmt: skip
        for line in response.iter_lines():
            if line.startswith("data:"):
                count += 1
                last = json.loads(line[5:])
                if last["type"] == "run.status" and last["data"]["status"] in (
                    "succeeded", "failed", "stopped", "lost",
                ):  # fmt: skip
                    break
    out[run_id] = time.perf_counter()
    out[run_id + ":count"] = count


def batch(srv: Server, n: int, sample_rss: list[int]) -> tuple[float, float, int]:
    """Launch n runs at once; returns (persisted events/s, served events/s, events)."""
    with srv.client() as client:
        started = time.perf_counter()
        ids = [client.post("/api/runs", json={"config": "ingest"}).json()["id"] for _ in range(n)]
        served: dict[str, float] = {}
        threads = [threading.Thread(target=serve_all, args=(srv, i, served)) for i in ids]
        for t in threads:
            t.start()
        assert srv.proc is not None
        while any(t.is_alive() for t in threads):
            sample_rss.append(rss_kib(srv.proc.pid))
            time.sleep(0.05)
        for t in threads:
            t.join()
        persisted_at = time.perf_counter()
        total = 0
        for run_id in ids:
            run = srv.wait_status(run_id, {"succeeded", "failed", "stopped", "lost"})
            assert run["status"] == "succeeded", run
            total += len(client.get(f"/api/runs/{run_id}/events", params={"limit": 5000}).json())
        served_at = max(v for k, v in served.items() if ":" not in k)
    return total / (persisted_at - started), total / (served_at - started), total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()
    repo = make_repo()
    data = Path(tempfile.mkdtemp(prefix="bench-data-"))
    srv = Server(
        data,
        {
            "AGENTFARM_CLAUDE_BIN": str(FAKE),
            "ANTHROPIC_API_KEY": "sk-bench-key-000000",
            "AGENTFARM_MAX_CONCURRENT_RUNS": str(args.concurrent),
        },
        data.parent / "server.log",
    ).start()
    try:
        with srv.client() as client:
            client.post(
                "/api/configs",
                json={
                    "name": "ingest",
                    "repo": str(repo),
                    "prompt": "go",
                    "env": {"BENCH_EVENTS": str(args.events)},
                },
            ).raise_for_status()
        assert srv.proc is not None
        idle = rss_kib(srv.proc.pid)
        one: list[int] = []
        many: list[int] = []
        p1, s1, n1 = batch(srv, 1, one)
        pn, sn, nn = batch(srv, args.concurrent, many)
        peak = max(many) if many else idle
    finally:
        srv.stop()
    print(f"events per run: {args.events + 5} (fast scripted agent)")
    print(f"1 run:   {n1:6d} events, persisted {p1:8.0f} ev/s, served {s1:8.0f} ev/s")
    print(
        f"{args.concurrent} runs: {nn:6d} events, persisted {pn:8.0f} ev/s, served {sn:8.0f} ev/s"
    )
    print(f"ratio {args.concurrent} runs / 1 run (persisted ev/s): {pn / p1:.2f}x")
    print(
        f"control-plane RSS: idle {idle / 1024:.1f} MiB, peak with {args.concurrent} agents "
        f"{peak / 1024:.1f} MiB -> {(peak - idle) / 1024 / args.concurrent:.2f} MiB per agent "
        f"(median during 1 run {median([float(x) for x in one]) / 1024:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
