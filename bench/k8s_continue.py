"""Continuing an ended Kubernetes run, on the tier-B test node, interleaved run by run:

(a) a new run: POST /api/runs -> the agent's first event (`agent.init`) and -> its end;
(b) that run, ended and its pod deleted, continued: POST /api/runs/{id}/resume -> the new
    pod's agent's first event and -> its end (old pod and Secret deleted, new pod, idle
    process, session put back, resume);
(c) a new run on a server whose pods do not wait after their agent
    (AGENTFARM_K8S_RESUME_WAIT_SECONDS=0: no session carried out at the end).

The end's cost, from the agent's result to the run's final status (push included), compares
(a) (the session carried out, then finish) with (c). Times are the events' own (control
plane) timestamps against the wall clock of the request. Needs root and the test cluster's
binaries (scripts/k8s-testenv/build.sh):

    .venv/bin/python bench/k8s_continue.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from common import Server, median

from tests.fakes import anthropic_api
from tests.k8s import cluster
from tests.k8s.agentimage import AgentWorld, agent_world

TERMINAL = {"succeeded", "failed", "stopped", "lost"}
SCENARIO = "bench-continue"


def turns() -> list[anthropic_api.Turn]:
    """Each process writes one file, commits it and answers (the continue's process takes the
    next three turns: the fake counts the model's replies since the marked first prompt)."""
    out: list[anthropic_api.Turn] = []
    for i in range(12):
        out += [
            anthropic_api.tool_use("Write", {"file_path": f"f{i}.txt", "content": f"{i}\n"}),
            anthropic_api.tool_use(
                "Bash", {"command": f"git add -A && git commit -q -m f{i}", "description": "c"}
            ),
            anthropic_api.text(f"File {i} done."),
        ]
    return out


def events(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/runs/{run_id}/events", params={"limit": 5000})
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def wait_end(srv: Server, run_id: str) -> None:
    run = srv.wait_status(run_id, TERMINAL, timeout=300)
    if run["status"] != "succeeded":
        raise SystemExit(f"run {run_id} ended {run['status']}: {run.get('error')}")


def figures(seen: list[dict[str, Any]], since: float) -> tuple[float, float, float]:
    """(request -> agent.init, request -> final status, agent.result -> final status) of the
    last agent process in ``seen``."""
    init = [e for e in seen if e["type"] == "agent.init"][-1]
    result = [e for e in seen if e["type"] == "agent.result"][-1]
    final = [e for e in seen if e["type"] == "run.status"][-1]
    return ts(init) - since, ts(final) - since, ts(final) - ts(result)


def pod_gone(world: AgentWorld, run_id: str) -> None:
    name = f"/api/v1/namespaces/{world.namespace}/pods/agentfarm-run-{run_id}"
    deadline = time.monotonic() + 90
    while world.node.request("GET", name)[0] != 404:
        if time.monotonic() > deadline:
            raise SystemExit(f"the pod of run {run_id} was not deleted")
        time.sleep(0.2)


def launch(srv: Server, client: httpx.Client, world: AgentWorld, marker: str) -> tuple[str, Any]:
    since = time.time()
    response = client.post("/api/runs", json={"spec": world.spec(f"{marker} write files")})
    response.raise_for_status()
    run_id = response.json()["id"]
    wait_end(srv, run_id)
    return run_id, figures(events(client, run_id), since)


def resume(srv: Server, client: httpx.Client, world: AgentWorld, run_id: str) -> Any:
    pod_gone(world, run_id)
    since = time.time()
    response = client.post(f"/api/runs/{run_id}/resume", json={"prompt": "one more file"})
    response.raise_for_status()
    wait_end(srv, run_id)
    return figures(events(client, run_id), since)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the tier-B test node needs root")
    if missing := cluster.missing_binaries():
        raise SystemExit(f"run scripts/k8s-testenv/build.sh first; missing: {', '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix="bench-k8s-continue-"))
    got: dict[str, list[tuple[float, float, float]]] = {"a": [], "b": [], "c": []}
    loads: list[float] = []
    try:
        with (
            cluster.running("node", work / "node") as node,
            agent_world(node, Path(tempfile.mkdtemp(dir=work)), "bench") as world,
        ):
            marker = world.fake.register(SCENARIO, turns())
            keeps = Server(work / "a", world.server_env(), work / "a.log")
            no_wait = world.server_env() | {
                "AGENTFARM_K8S_RESUME_WAIT_SECONDS": "0",
                "AGENTFARM_K8S_INSTANCE": "bench-no-wait",
            }
            plain = Server(work / "c", no_wait, work / "c.log")
            try:
                keeps.start()
                plain.start()
                with keeps.client() as ca, plain.client() as cc:
                    warm, _ = launch(keeps, ca, world, marker)  # warm-up every path
                    resume(keeps, ca, world, warm)
                    launch(plain, cc, world, marker)
                    for i in range(args.runs):
                        order = ["ab", "c"] if i % 2 == 0 else ["c", "ab"]
                        for path in order:
                            if path == "ab":
                                run_id, figs = launch(keeps, ca, world, marker)
                                got["a"].append(figs)
                                got["b"].append(resume(keeps, ca, world, run_id))
                            else:
                                got["c"].append(launch(plain, cc, world, marker)[1])
                        loads.append(os.getloadavg()[0])
            finally:
                keeps.stop()
                plain.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ms(path: str, index: int) -> str:
        values = [f[index] for f in got[path]]
        every = ", ".join(f"{v * 1000:.0f}" for v in values)
        return f"median {median(values) * 1000:6.0f} ms  (all: {every})"

    def ratio(top: str, bottom: str, index: int) -> float:
        return median([f[index] for f in got[top]]) / median([f[index] for f in got[bottom]])

    print(
        f"runs: {args.runs} each, interleaved; cores: {os.cpu_count()}; load average during "
        f"the runs: {', '.join(f'{v:.1f}' for v in loads)}"
    )
    print(f"(a) new run, POST -> first agent event:             {ms('a', 0)}")
    print(f"(b) continue, POST resume -> first agent event:     {ms('b', 0)}")
    print(f"(a) new run, POST -> succeeded:                     {ms('a', 1)}")
    print(f"(b) continue, POST resume -> succeeded:             {ms('b', 1)}")
    print(f"(c) new run, no wait, POST -> succeeded:            {ms('c', 1)}")
    print(f"(a) end: result -> final status (session kept):     {ms('a', 2)}")
    print(f"(b) end: result -> final status (session kept):     {ms('b', 2)}")
    print(f"(c) end: result -> final status (no wait, no keep): {ms('c', 2)}")
    print(
        f"ratios: continue/new run to first event {ratio('b', 'a', 0):.2f}x, to succeeded "
        f"{ratio('b', 'a', 1):.2f}x; end with the session kept / without {ratio('a', 'c', 2):.2f}x"
    )


if __name__ == "__main__":
    main()
