"""The kubernetes backend following many pods at once, on the API tier (tier A, no root).

A real kube-apiserver (+ etcd); a harness process plays the kubelet (tests/k8s/kubeletsim.py):
it binds each new agent pod, writes it ``Running``, writes its log in bursts (lines numbered as
deploy/agent/entrypoint.py numbers them), served through the API server's ``pods/log`` proxy,
then ends the log and writes the pod ``Succeeded``. This process is the control plane: the real
backend launches the runs and follows each to its exit, as the supervisor does.

Measured per phase (one namespace per phase, sizes interleaved round by round): this
process's CPU, RSS and open fds (sockets among them) above its idle level, the API requests
it made by kind (counted on its side), the API server's registered pod watchers and the log
streams open at once, and the time from the harness writing a status to the backend reporting
it (``started``, ``exit``), p50/p99. Every run must end with all its lines, once each.

    .venv/bin/python bench/k8s_scale.py [--pods 50,500] [--rounds 1] [--lines 40]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import inspect
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, median

from agentfarm.backends.base import Record
from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.backends.kubernetes import backend as k8s_backend
from agentfarm.backends.kubernetes import manifests
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests.k8s import cluster, kubeletsim

INSTANCE = "scale"
COMMAND = AgentCommand(argv=["claude", "-p"], env={}, stdin=b"{}\n")
PAYLOAD = json.dumps(
    {"type": "assistant", "message": {"role": "assistant", "content": [
        {"type": "text", "text": "working on it: " + "x" * 120}]}}
).encode()  # fmt: skip


def kit_role_rules() -> list[dict[str, Any]]:
    for doc in yaml.safe_load_all((ROOT / "deploy/k8s/base/rbac.yaml").read_text()):
        if doc["kind"] == "Role":
            rules: list[dict[str, Any]] = doc["rules"]
            return rules
    raise SystemExit("no Role in deploy/k8s/base/rbac.yaml")


# --- the harness (a process of its own, so that its work is not counted as ours) ---------------


async def harness(args: argparse.Namespace) -> None:
    target = cluster.Cluster.load(Path(args.cluster))
    kubelet = kubeletsim.FakeKubelet(target)
    await kubelet.start()
    times: dict[str, dict[str, float]] = {}
    peak_streams = 0
    per_burst = max(1, args.lines // args.bursts)
    print("ready", flush=True)

    everyone = asyncio.Event()
    writing = asyncio.Semaphore(16)

    async def play(driver: kubeletsim.Driver, name: str) -> None:
        await driver.bind(name)
        await everyone.wait()  # all the pods exist: they start together
        async with writing:
            times[name] = {"running": time.time()}
            await driver.running(name)
        log = kubelet.log(args.namespace, name)
        seq = 0
        for _ in range(args.bursts):
            await asyncio.sleep(args.seconds / args.bursts)
            for _ in range(per_burst):
                seq += 1
                log.write(kubeletsim.entrypoint_line(seq, PAYLOAD))
        log.end()
        await asyncio.sleep(0.5)  # a kubelet reports an exit after the log ends
        async with writing:
            times[name]["done"] = time.time()
            await driver.succeeded(name)

    async def watch_streams() -> None:
        nonlocal peak_streams
        while True:
            peak_streams = max(peak_streams, kubelet.open_streams)
            await asyncio.sleep(0.1)

    async def drive(driver: kubeletsim.Driver) -> None:
        plays: list[asyncio.Task[None]] = []
        selector = manifests.instance_selector(INSTANCE)
        async with contextlib.aclosing(driver.new_pods(selector)) as names:
            async for name in names:
                plays.append(asyncio.create_task(play(driver, name)))
                if len(plays) == args.pods:
                    break
        everyone.set()
        try:
            await asyncio.gather(*plays)
        finally:
            for task in plays:
                task.cancel()

    sampler = asyncio.create_task(watch_streams())
    async with kubeletsim.Driver(target, args.namespace) as driver:
        work = asyncio.create_task(drive(driver))
        # The control plane says when it is done (every run ended, or it gave up); until then
        # the ended logs are still served.
        await asyncio.to_thread(sys.stdin.readline)
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        requests = driver.requests
    sampler.cancel()
    await kubelet.aclose()
    result = {
        "times": times,
        "harness_requests": requests,
        "log_requests": len(kubelet.requests),
        "peak_log_streams": peak_streams,
        "lines_per_pod": per_burst * args.bursts,
    }
    print(json.dumps(result), flush=True)


# --- the control plane --------------------------------------------------------------------------


def count_requests(api_client: Any, counts: collections.Counter[str]) -> None:
    """Count every request the backend's API client makes, by kind."""
    rest = api_client.rest_client
    original = rest.request

    async def counted(method: str, url: str, query_params: Any = None, **kw: Any) -> Any:
        params = dict(query_params or [])
        if params.get("watch"):
            kind = "watch"
        elif url.endswith("/log"):
            kind = "log follow" if params.get("follow") else "log read"
        else:
            kind = f"{method} {'secret' if '/secrets' in url else 'pod'}"
        counts[kind] += 1
        return await original(method, url, query_params=query_params, **kw)

    rest.request = counted


def own_usage() -> tuple[int, int, int]:
    """RSS (KiB), open fds, sockets of this process."""
    fds = os.listdir("/proc/self/fd")
    sockets = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(fds), sockets


def pod_watchers(target: cluster.Cluster) -> float:
    status, text = target.request("GET", "/metrics", timeout=10)
    if status != 200 or not isinstance(text, str):
        return float("nan")
    for line in text.splitlines():
        if line.startswith("apiserver_registered_watchers{") and 'kind="Pod"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def phase(target: cluster.Cluster, pods: int, args: argparse.Namespace) -> dict[str, Any]:
    namespace = target.create_namespace("scale")
    access = await asyncio.to_thread(
        target.service_account_access, namespace, kit_role_rules(), name="agentfarm"
    )
    harness_argv = [sys.executable, __file__, "--harness", "--cluster", str(target.workdir),
                    "--namespace", namespace, "--pods", str(pods), "--lines", str(args.lines),
                    "--bursts", str(args.bursts), "--seconds", str(args.seconds)]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *harness_argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        limit=64 * 1024 * 1024,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    if (await proc.stdout.readline()).strip() != b"ready":
        raise SystemExit("the harness did not start")
    settings = Settings(
        k8s_kubeconfig=access.kubeconfig, k8s_namespace=namespace,
        k8s_image="agentfarm.local/agent:1", k8s_instance=INSTANCE,
        k8s_cleanup_after_seconds=0, k8s_resume_wait_seconds=0, stop_grace_seconds=2,
    )  # fmt: skip
    if "log_streams" in inspect.signature(k8s_api.connect).parameters:
        api_client = await k8s_api.connect(access.kubeconfig, log_streams=1000)
    else:  # the code before AGENTFARM_K8S_LOG_STREAMS
        api_client = await k8s_api.connect(access.kubeconfig)
    counts: collections.Counter[str] = collections.Counter()
    count_requests(api_client, counts)
    backend = k8s_backend.KubernetesBackend(settings, api_client)
    seen: dict[str, dict[str, float]] = {}
    lines: dict[str, list[int]] = {}
    base_rss, base_fds, base_sockets = own_usage()
    peak = {"rss": base_rss, "fds": base_fds, "sockets": base_sockets, "watchers": 0.0}
    sampling = True

    async def sample() -> None:
        tick = 0
        while sampling:
            rss, fds, sockets = own_usage()
            peak["rss"], peak["fds"] = max(peak["rss"], rss), max(peak["fds"], fds)
            peak["sockets"] = max(peak["sockets"], sockets)
            if tick % 8 == 0:
                watchers = await asyncio.to_thread(pod_watchers, target)
                peak["watchers"] = max(peak["watchers"], watchers)
            tick += 1
            await asyncio.sleep(0.25)

    async def follow(run: models.Run, limit: asyncio.Semaphore) -> None:
        async with limit:
            handle, _ = await backend.launch(run, LaunchSpec.of(run.id, COMMAND, {}))
        name = manifests.object_name(run.id)
        got: list[Record] = []
        async for record in handle.records(after=0):
            got.append(record)
            if record.kind == "started":
                seen.setdefault(name, {})["started"] = time.time()
            if record.kind == "exit":
                seen.setdefault(name, {})["exit"] = time.time()
                break
        lines[name] = [r.cursor >> 8 for r in got if r.kind == "stdout"]

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    sampler = asyncio.create_task(sample())
    launches = asyncio.Semaphore(20)
    runs = [
        models.Run(
            spec=models.AgentSpec(
                repo="https://github.com/example/repo.git", backend="kubernetes", prompt="hi"
            ),
            config_name="scale",
        )
        for _ in range(pods)
    ]
    try:
        async with asyncio.timeout(args.timeout):
            await asyncio.gather(*(follow(run, launches) for run in runs))
    except TimeoutError:
        print(f"gave up after {args.timeout:.0f} s", file=sys.stderr)
    finally:
        elapsed = time.monotonic() - began
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        sampling = False
        await sampler
        await backend.aclose()
        await api_client.close()
    out, _ = await proc.communicate(b"done\n")
    played = json.loads(out.decode().strip().splitlines()[-1])
    times: dict[str, dict[str, float]] = played["times"]
    expected = list(range(1, played["lines_per_pod"] + 1))
    wrong = [name for name, got in lines.items() if got != expected]
    ended = sum("exit" in seen.get(manifests.object_name(run.id), {}) for run in runs)
    started = [
        seen[n]["started"] - t["running"] for n, t in times.items() if "started" in seen.get(n, {})
    ]
    exits = [
        seen[n]["exit"] - t["done"]
        for n, t in times.items()
        if "exit" in seen.get(n, {}) and "done" in t
    ]
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {
        "pods": pods,
        "wrong": len(wrong),
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "rss_mib": (peak["rss"] - base_rss) / 1024,
        "fds": peak["fds"] - base_fds,
        "sockets": peak["sockets"] - base_sockets,
        "watchers": peak["watchers"],
        "log_streams": played["peak_log_streams"],
        "requests": dict(counts),
        "log_requests_served": played["log_requests"],
        "started_ms": [s * 1000 for s in started],
        "exit_ms": [e * 1000 for e in exits],
        "ended": ended,
    }


FIGURES: list[tuple[str, Any]] = [
    ("CPU ms per pod", lambda r, n: r["cpu_s"] * 1000 / n),
    ("RSS KiB per pod (peak above idle)", lambda r, n: r["rss_mib"] * 1024 / n),
    ("open fds per pod (peak)", lambda r, n: r["fds"] / n),
    ("of which sockets, per pod", lambda r, n: r["sockets"] / n),
    ("API requests per pod", lambda r, n: sum(r["requests"].values()) / n),
    ("watch requests per pod", lambda r, n: r["requests"].get("watch", 0) / n),
    ("log requests per pod", lambda r, n: (r["requests"].get("log follow", 0)
                                           + r["requests"].get("log read", 0)) / n),
    ("pod watchers at the API server (peak)", lambda r, n: r["watchers"]),
    ("log streams open at once (peak)", lambda r, n: r["log_streams"]),
    ("Running -> started p50 ms", lambda r, n: pct(r["started_ms"], 0.5)),
    ("Running -> started p99 ms", lambda r, n: pct(r["started_ms"], 0.99)),
    ("Succeeded -> exit p50 ms", lambda r, n: pct(r["exit_ms"], 0.5)),
    ("Succeeded -> exit p99 ms", lambda r, n: pct(r["exit_ms"], 0.99)),
    ("phase seconds (agents run 30 s)", lambda r, n: r["elapsed_s"]),
    ("runs ended (of the pods launched)", lambda r, n: r["ended"]),
    ("runs with a line lost or doubled", lambda r, n: r["wrong"]),
]  # fmt: skip


def report(results: list[dict[str, Any]], sizes: list[int], variants: list[str]) -> None:
    small, large = sizes[0], sizes[-1]
    head = " | ".join(f"{v}: {small} pods | {v}: {large} pods | {v}: ratio" for v in variants)
    print(f"\n| figure | {head} |")
    print("|---|" + "---|" * 3 * len(variants))
    for label, figure in FIGURES:
        cells: list[str] = []
        for variant in variants:
            a, b = (
                median(
                    [figure(r, n) for r in results if r["pods"] == n and r["variant"] == variant]
                )
                for n in (small, large)
            )
            cells += [f"{a:,.1f}", f"{b:,.1f}", f"{b / a:.2f}x" if a else "-"]
        print(f"| {label} | {' | '.join(cells)} |")
    for r in results:
        print(f"# {r['variant']}, {r['pods']} pods: load {r['load']}; requests {r['requests']}")


async def control(args: argparse.Namespace) -> None:
    """One phase as the control plane, in a process of its own (its own imports: the code of
    the variant compared)."""
    target = cluster.Cluster.load(Path(args.cluster))
    result = await phase(target, int(args.pods), args)
    print("RESULT " + json.dumps(result), flush=True)


async def main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.pods.split(",")]
    variants = [("this", "")] + [tuple(v.split("=", 1)) for v in args.compare]
    if missing := cluster.missing_binaries():
        raise SystemExit(f"missing {', '.join(missing)}: run scripts/k8s-testenv/build.sh")
    work = Path(tempfile.mkdtemp(prefix="agentfarm-k8s-scale-"))
    results: list[dict[str, Any]] = []
    shape = ["--lines", str(args.lines), "--bursts", str(args.bursts),
             "--seconds", str(args.seconds), "--timeout", str(args.timeout)]  # fmt: skip
    with cluster.running("api", work / "api") as target:
        for round_ in range(args.rounds):
            order = sizes if round_ % 2 == 0 else sizes[::-1]
            for size in order:
                for label, src in variants if round_ % 2 == 0 else variants[::-1]:
                    env = dict(os.environ)
                    if src:
                        env["PYTHONPATH"] = src
                    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, __file__, "--control", "--cluster", str(target.workdir),
                        "--pods", str(size), *shape, env=env, stdout=asyncio.subprocess.PIPE,
                    )  # fmt: skip
                    out, _ = await proc.communicate()
                    found = [x for x in out.decode().splitlines() if x.startswith("RESULT ")]
                    if proc.returncode or not found:
                        raise SystemExit(f"the {label} phase with {size} pods failed")
                    result = json.loads(found[0].removeprefix("RESULT "))
                    load += " -> " + " ".join(f"{x:.2f}" for x in os.getloadavg())
                    result.update(variant=label, load=load)
                    results.append(result)
                    print(f"round {round_ + 1}, {label}, {size} pods: {result['elapsed_s']:.1f} s,"
                          f" CPU {result['cpu_s']:.1f} s, load {load}", flush=True)  # fmt: skip
    report(results, sizes, [label for label, _ in variants])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", default="50,500")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--lines", type=int, default=40, help="log lines per pod")
    parser.add_argument("--bursts", type=int, default=4, help="the lines come in this many")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each agent runs")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--compare", action="append", default=[], metavar="LABEL=SRC",
        help="also run the backend from another source tree (e.g. main=/work/main/src)",
    )  # fmt: skip
    parser.add_argument("--control", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--harness", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cluster", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.harness:
        arguments.pods = int(arguments.pods)
        asyncio.run(harness(arguments))
    elif arguments.control:
        asyncio.run(control(arguments))
    else:
        asyncio.run(main(arguments))
