"""AFK pipeline latency: a signed webhook (an issue labeled on the fake forge) to the run
started, to the first status comment on the issue and to the run's first agent event, side by
side with a direct ``POST /api/runs`` of the same work (same forge clone over HTTP, same token,
same fake model) to the run started and its first agent event; interleaved run by run.

    .venv/bin/python bench/pipeline_latency.py [--runs 10] [--kind github|forgejo]

"Run started" is the run's ``started_at`` (the backend has cloned and launched the agent), and
the first agent event is its first ``agent.*`` event's timestamp, both stamped by the server;
the first comment is when the fake forge answered the comment's ``POST``. Every figure is that
instant minus the moment the client began sending (one machine, one clock).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common import FakeAnthropic, Server, claude_bin, median

from tests.fakes.forge import FakeForge
from tests.integration.pipeline_farm import TOKEN_SECRET, WRITER, Farm, wait_for

REPO = "bench/latency"


def stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def first_agent_event(farm: Farm, run_id: str) -> float:
    def probe() -> float | None:
        with farm.api() as c:
            events: list[dict[str, Any]] = c.get(f"/api/runs/{run_id}/events").json()
        found = [e for e in events if str(e["type"]).startswith("agent.")]
        return stamp(found[0]["ts"]) if found else None

    return wait_for(f"an agent event of {run_id}", probe, farm=farm, timeout=120)


def started(farm: Farm, run_id: str) -> tuple[dict[str, Any], float]:
    def probe() -> dict[str, Any] | None:
        with farm.api() as c:
            run: dict[str, Any] = c.get(f"/api/runs/{run_id}").json()
        return run if run.get("started_at") else None

    run = wait_for(f"run {run_id} to start", probe, farm=farm, timeout=120)
    return run, stamp(run["started_at"])


def via_webhook(farm: Farm, index: int, *, trace: bool = False) -> dict[str, float]:
    marker = farm.scenario(f"bench-{index}")
    number = farm.forge.open_issue(REPO, f"Benchmark issue {index}", f"Go. {marker}")
    deliveries = farm.forge.label(REPO, number, "agentfarm", by=WRITER)
    known = {r["id"] for r in farm.runs(REPO)}
    sent = time.time()
    farm.deliver(deliveries)
    run = wait_for(
        "the webhook's run",
        lambda: next((r for r in farm.runs(REPO) if r["id"] not in known), None),
        farm=farm,
        repo=REPO,
    )
    _, run_started = started(farm, run["id"])
    agent = first_agent_event(farm, run["id"])
    comment = wait_for(
        "the first status comment",
        lambda: next(
            (
                r.at
                for r in list(farm.forge.requests)
                if r.method == "POST"
                and r.path.endswith(f"/{REPO}/issues/{number}/comments")
                and r.status == 201
            ),
            None,
        ),
        farm=farm,
        repo=REPO,
    )
    wait_for("the attempt to end", lambda: farm.settled(REPO), farm=farm, repo=REPO)
    if trace:  # where the time goes: the forge calls before the run started
        for r in farm.forge.requests:
            if sent <= r.at <= run_started:
                print(f"  +{(r.at - sent) * 1000:6.1f} ms  {r.method} {r.path} -> {r.status}")
        print(f"  +{(run_started - sent) * 1000:6.1f} ms  run started")
    return {"started": run_started - sent, "comment": comment - sent, "agent": agent - sent}


def via_api(farm: Farm, index: int) -> dict[str, float]:
    marker = farm.scenario(f"direct-{index}")
    spec = {
        "repo": farm.forge.git_url(REPO),
        "prompt": f"{marker} Go.",
        "git_token_secret": TOKEN_SECRET,
    }
    with farm.api() as c:
        sent = time.time()
        response = c.post("/api/runs", json={"spec": spec})
    if response.status_code != 201:
        raise SystemExit(f"POST /api/runs answered {response.status_code}: {response.text}")
    run_id = response.json()["id"]
    _, run_started = started(farm, run_id)
    agent = first_agent_event(farm, run_id)
    farm.server.wait_status(run_id, {"succeeded", "failed", "stopped", "lost"}, timeout=120)
    return {"started": run_started - sent, "agent": agent - sent}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kind", choices=["github", "forgejo"], default="github")
    parser.add_argument("--trace", action="store_true", help="show the last webhook's calls")
    args = parser.parse_args()
    binary = claude_bin()
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    with FakeAnthropic().start() as model, FakeForge(root / "forge", kind=args.kind) as forge:
        forge.create_repo(REPO)
        forge.add_collaborator(REPO, WRITER, "write")
        srv = Server(
            root / "data",
            {
                "AGENTFARM_CLAUDE_BIN": binary,
                "ANTHROPIC_BASE_URL": model.base_url,
                "ANTHROPIC_API_KEY": "sk-bench-key-000000",
            },
            root / "server.log",
        )
        srv.env["AGENTFARM_PUBLIC_URL"] = srv.url
        srv.start()
        farm = Farm(args.kind, forge, srv, model, name="bench", repos=[REPO])
        try:
            farm.add_forge()
            via_webhook(farm, -1)  # warm-up
            via_api(farm, -1)
            hook: list[dict[str, float]] = []
            direct: list[dict[str, float]] = []
            for index in range(args.runs):
                last = index == args.runs - 1
                hook.append(via_webhook(farm, index, trace=args.trace and last))
                direct.append(via_api(farm, index))
        finally:
            srv.stop()
    load = os.getloadavg()[0]
    print(f"runs: {args.runs} each, interleaved; forge: {args.kind}; cores: {os.cpu_count()}; ")
    print(f"load average at the end: {load:.1f}")

    def ms(rows: list[dict[str, float]], key: str) -> float:
        return median([row[key] for row in rows]) * 1000

    d_start, d_agent = ms(direct, "started"), ms(direct, "agent")
    w_start, w_comment, w_agent = ms(hook, "started"), ms(hook, "comment"), ms(hook, "agent")
    print(f"direct POST /api/runs -> run started:     median {d_start:7.1f} ms")
    print(f"direct POST /api/runs -> first agent event: median {d_agent:7.1f} ms")
    print(f"signed webhook -> run started:            median {w_start:7.1f} ms")
    print(f"signed webhook -> first status comment:   median {w_comment:7.1f} ms")
    print(f"signed webhook -> first agent event:      median {w_agent:7.1f} ms")
    print(f"ratio webhook/direct, run started: {w_start / d_start:.2f}x")
    print(f"ratio webhook/direct, first agent event: {w_agent / d_agent:.2f}x")


if __name__ == "__main__":
    main()
