"""Cockpit figures: time to first paint (dashboard; a run page with 10,000 events), the delay
from an agent event to its appearance in a connected browser, and SSE delivery to 200
concurrent viewers of 20 running agents versus a single viewer, with the control plane's CPU.

The server is a real uvicorn process serving the real app, on a stamping fake backend: each
agent event carries the wall-clock time it was emitted, so a viewer's delay is its arrival
time minus that stamp (same machine, same clock). The SSE viewers live in processes of their
own (``bench/sse_viewers.py``, ``--workers`` of them, each holding many connections), never in
the server's process nor in this one; the control plane's CPU comes from /proc/<pid>/stat. One
viewer, one viewer per agent (every event rendered once, as with 200) and 200 viewers are
measured in interleaved rounds (``--rounds``), medians printed side by side, and the CPU
ratio of 200 viewers to one within each round, with a 95 % bootstrap interval for the median
of those. Prints the figures only.

With ``--variants base=/work/main/src,this`` one server per variant (each a ``src`` tree; "this"
is this checkout's) is measured, the variants interleaved in every round as well; a variant
``NAME=SRC@MS`` runs with ``AGENTFARM_STREAM_BATCH_MS=MS`` (``batch50=@50``: this checkout's).
``--cases`` adds viewer layouts: ``N/K`` is N viewers spread over the first K runs only (``20/1``:
twenty viewers of one run, each event rendered once and sent twenty times). ``--pin`` keeps
the server on CPU 0 and the viewer processes on the others, as if the viewers were on other
machines (the server's CPU is then not shared with theirs on the same core).

    .venv/bin/python bench/cockpit.py [--agents 20] [--viewers 200] [--seconds 15]
        [--rounds 3] [--workers 4] [--no-browser] [--variants NAME=SRC[@MS],...]
        [--cases N/K,...] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
# A variant's server runs another src tree (--variants).
sys.path[:0] = [os.environ.get("AGENTFARM_BENCH_SRC", str(ROOT / "src")), str(ROOT)]

from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, _FakeRun
from agentfarm.domain import models
from tests.integration.server import CHROMIUM, CHROMIUM_ARGS, free_port

TOKEN = "bench-token-0123456789abcdef"
PASSWORD = "bench-password-1"
STAMP = re.compile(r"ts:(\d+\.\d+)")


# --- the server side ---------------------------------------------------------------------------
class StampingBackend(FakeBackend):
    """Each run emits an assistant text carrying ``ts:<emit time>`` every ``interval`` seconds;
    the prompt says how many and how often: ``stamp COUNT INTERVAL``."""

    async def _play(self, state: _FakeRun, steps: Any) -> None:
        run_id, prompt = steps
        _, count, interval, *wait = prompt.split()
        session = f"bench-{run_id}"
        init = {
            "type": "system",
            "subtype": "init",
            "session_id": session,
            "model": "bench",
            "tools": ["Bash"],
            "cwd": "/w",
            "permissionMode": "bypassPermissions",
        }
        state.append("stdout", json.dumps(init).encode())
        await asyncio.sleep(float(wait[0]) if wait else 0.0)  # viewers connect meanwhile
        for i in range(int(count)):
            await asyncio.sleep(float(interval))
            text = {"type": "text", "text": f"step {i} ts:{time.time():.6f}"}
            message = {"id": f"m{i}", "content": [text]}
            line = {"type": "assistant", "session_id": session, "message": message}
            state.append("stdout", json.dumps(line).encode())
        result = {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": "done",
            "num_turns": 1,
            "duration_ms": 1,
            "total_cost_usd": 0.0,
            "session_id": session,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
        state.append("stdout", json.dumps(result).encode())
        state.append("exit", exit=ExitInfo(exit_code=0))


def serve(data_dir: str, port: int) -> None:
    import uvicorn

    from agentfarm.settings import Settings
    from agentfarm.web.app import create_app

    # The "script" is just what _play needs: the run's id and its prompt.
    backend = StampingBackend(script=lambda run, _cmd: (run.id, run.prompt))  # type: ignore
    settings = Settings.model_validate(
        {
            "data_dir": data_dir,
            "token": TOKEN,
            "anthropic_api_key": "sk-bench-0000000000",
            "claude_bin": "/bin/true",
            "max_concurrent_runs": 100,
        }
    )
    batch = os.environ.get("AGENTFARM_STREAM_BATCH_MS")  # a variant's gap between wake-ups
    if batch is not None:
        from agentfarm.supervisor import hub

        settings = settings.model_copy(update={"stream_batch_ms": int(batch)})
        hub.WAKE_GAP = int(batch) / 1000  # a tree from before the setting
    app = create_app(settings, backends={"local": backend})
    from agentfarm.cli.server import tune_gc

    tune_gc()  # the collector's settings of `agentfarm serve`: measure the server users run
    profile = os.environ.get("AGENTFARM_BENCH_PROFILE")  # where the server's profile goes
    if not profile:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False)
        return
    import cProfile
    import signal

    signal.raise_signal = lambda _sig: None  # uvicorn re-raises SIGTERM at exit: dump first
    with cProfile.Profile() as prof:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False)
    prof.dump_stats(profile)


async def seed(data_dir: Path, events: int, runs: int) -> str:
    """A finished run with ``events`` events of a realistic mix, and ``runs`` more finished runs."""
    from agentfarm.store import Store

    store = await Store.open(data_dir / "agentfarm.db")
    try:
        spec = models.AgentSpec(repo="/srv/repo", prompt="seeded")
        big = models.Run(spec=spec, config_name="seeded", status=models.RunStatus.succeeded)
        await store.create_run(big)
        drafts: list[models.EventDraft] = []
        for i in range(events):
            kind = i % 3
            if kind == 0:
                drafts.append(
                    models.EventDraft(
                        type="agent.text",
                        data={
                            "message_id": f"m{i}",
                            "index": 0,
                            "text": f"Step **{i}**: reading `src/mod_{i}.py`, fixing the test.",
                        },
                    )
                )
            elif kind == 1:
                drafts.append(
                    models.EventDraft(
                        type="agent.tool_call",
                        data={
                            "message_id": f"m{i}",
                            "index": 1,
                            "id": f"toolu_{i}",
                            "name": "Bash",
                            "input": {
                                "command": f"pytest -q tests/test_{i}.py",
                                "description": "run",
                            },
                        },
                    )
                )
            else:
                drafts.append(
                    models.EventDraft(
                        type="agent.tool_result",
                        data={
                            "id": f"toolu_{i - 1}",
                            "is_error": False,
                            "truncated": False,
                            "size": 40,
                            "content": f"{i} passed in 0.12s\n" * 3,
                        },
                    )
                )
        for start in range(0, len(drafts), 1000):
            await store.append_events(big.id, drafts[start : start + 1000])
        for i in range(runs):
            run = models.Run(
                spec=spec,
                config_name=f"seed-{i % 7}",
                status=models.RunStatus.succeeded,
                cost_usd=0.01 * i,
                branch=f"agentfarm/seed{i}",
            )
            await store.create_run(run)
        return big.id
    finally:
        await store.close()


# --- the client side ---------------------------------------------------------------------------
def cpu_split(pid: int) -> tuple[float, float]:
    """The process's user and system CPU seconds so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def launch(client: httpx.AsyncClient, count: int, interval: float, wait: float) -> str:
    prompt = f"stamp {count} {interval} {wait}"
    response = await client.post("/api/runs", json={"spec": {"repo": "/r", "prompt": prompt}})
    response.raise_for_status()
    run_id: str = response.json()["id"]
    return run_id


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads made later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


async def fan_out(
    url: str,
    pid: int,
    agents: int,
    viewers: int,
    seconds: float,
    workers: int,
    *,
    over: int | None = None,
    viewer_cpus: set[int] | None = None,
) -> dict[str, float]:
    """``agents`` runs emitting 5 stamped events a second, watched by ``viewers`` SSE
    connections (spread evenly over the runs, or over the first ``over`` of them) held by
    ``workers`` processes of their own (on ``viewer_cpus`` if given)."""
    interval = 0.2
    count = int(seconds / interval)
    quiet = 5.0  # the agents' quiet start: viewers connect meanwhile, CPU is measured after
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        runs = [await launch(c, count, interval, wait=quiet) for _ in range(agents)]
    started = time.monotonic()
    targets = [runs[i % (over or agents)] for i in range(viewers)]
    shares = [targets[w::workers] for w in range(min(workers, viewers))]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "bench" / "sse_viewers.py"),
            url,
            TOKEN,
            *share,
            stdout=asyncio.subprocess.PIPE,
        )
        for share in shares
    ]
    if viewer_cpus:
        for proc in procs:
            pin(proc.pid, viewer_cpus)
    outputs = asyncio.gather(*(p.communicate() for p in procs))
    await asyncio.sleep(max(0.0, quiet - (time.monotonic() - started)))
    (user0, sys0), t0, load0 = cpu_split(pid), time.monotonic(), load_average()
    # The steady part: while the agents emit (their last event is due at ``started + quiet +
    # seconds``); what follows is the runs' end, each viewer's last message and its close.
    await asyncio.sleep(max(0.0, started + quiet + seconds - 0.5 - time.monotonic()))
    (user_s, sys_s), steady = cpu_split(pid), time.monotonic() - t0
    results = [json.loads(out) for out, _ in await outputs]
    (user1, sys1), elapsed = cpu_split(pid), time.monotonic() - t0
    cpu = (user1 - user0 + sys1 - sys0) / elapsed
    delays = [d for r in results for d in r["delays"]]
    errors = [e for r in results for e in r["errors"]]
    if errors:
        print(f"  viewer errors ({len(errors)}): {errors[:3]}", file=sys.stderr)
    return {
        "p50_ms": pct(delays, 0.5) * 1000,
        "p99_ms": pct(delays, 0.99) * 1000,
        "cpu_pct": cpu * 100,
        "sys_pct": (sys1 - sys0) / elapsed * 100,  # the kernel's share: mostly the sockets
        "steady_pct": (user_s - user0 + sys_s - sys0) / steady * 100,
        "end_cpu_ms": (user1 - user_s + sys1 - sys_s) * 1000,
        "events": len(delays),
        "load": max(load0, load_average()),
    }


def browser_figures(url: str, big_run: str, repeats: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    def fcp(page: Any, path: str) -> float:
        page.goto(url + path, wait_until="load")
        page.wait_for_function("performance.getEntriesByName('first-contentful-paint').length")
        value: float = page.evaluate(
            "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? NaN"
        )
        return value

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 390, "height": 844}, is_mobile=True, bypass_csp=True
        )
        page = context.new_page()
        page.goto(url + "/login")
        page.fill("input[name=username]", "bench")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(url + "/")
        dash = statistics.median(fcp(page, "/") for _ in range(repeats))
        run = statistics.median(fcp(page, f"/runs/{big_run}") for _ in range(repeats))
        # Agent event -> on screen: stamps compared when a MutationObserver sees the node.
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            live = c.post("/api/runs", json={"spec": {"repo": "/r", "prompt": "stamp 40 0.1 2"}})
            live_id = live.json()["id"]
        page.goto(url + f"/runs/{live_id}")
        page.evaluate("""() => { window.__d = [];
          new MutationObserver(ms => { const now = Date.now() / 1000;
            for (const m of ms) for (const n of m.addedNodes) {
              const hit = /ts:(\\d+\\.\\d+)/.exec(n.textContent || "");
              if (hit) window.__d.push(now - Number(hit[1])); } })
          .observe(document.getElementById('events'), {childList: true}); }""")
        page.wait_for_function(
            "document.getElementById('stream').dataset.live === 'ended'", timeout=60_000
        )
        shown: list[float] = page.evaluate("window.__d")
        browser.close()
    return {
        "fcp_dashboard_ms": dash,
        "fcp_run_10k_ms": run,
        "browser_p50_ms": pct(shown, 0.5) * 1000,
        "browser_p99_ms": pct(shown, 0.99) * 1000,
        "browser_events": len(shown),
    }


async def start_server(
    data: Path, src: str, batch: int | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AGENTFARM_BENCH_SRC": src}
    env.pop("AGENTFARM_STREAM_BATCH_MS", None)
    if batch is not None:
        env["AGENTFARM_STREAM_BATCH_MS"] = str(batch)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(data), str(port), env=env
    )
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        for _ in range(300):
            try:
                if (await c.get("/api/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
        await c.post("/api/admin/users", json={"name": "bench", "password": PASSWORD})
    return proc, url


def parse_variants(spec: str) -> dict[str, tuple[str, int | None]]:
    """``NAME=SRC@MS,...``: each variant's src tree (this checkout's if empty) and its
    ``AGENTFARM_STREAM_BATCH_MS`` (None: the tree's default)."""
    variants: dict[str, tuple[str, int | None]] = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        src, _, batch = value.partition("@")
        tree = str(Path(src).resolve()) if src else str(ROOT / "src")
        variants[name] = (tree, int(batch) if batch else None)
    return variants


def parse_cases(spec: str, agents: int, viewers: int) -> list[tuple[int, int]]:
    """``N`` or ``N/K`` each: N viewers over the first K runs (all of them without ``/K``);
    1, one per agent and ``viewers`` are always measured (the ratios need them)."""
    cases = [(1, agents), (agents, agents), (viewers, agents)]
    for item in filter(None, spec.split(",")):
        n, _, k = item.partition("/")
        cases.append((int(n), min(agents, int(k)) if k else agents))
    return list(dict.fromkeys(cases))


def case_label(case: tuple[int, int], agents: int) -> str:
    n, over = case
    label = "1 viewer" if n == 1 else f"{n} viewers"
    return label if over == agents or n == 1 else f"{label} of {over} run{'s' * (over > 1)}"


async def seed_with(src: str, data: Path) -> str:
    """``seed`` run by the variant's own code (its store, its migrations); the big run's id."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--seed",
        str(data),
        env={**os.environ, "AGENTFARM_BENCH_SRC": src},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"seeding {data} with {src} failed ({proc.returncode})")
    return out.decode().split()[-1]


async def main_async(args: argparse.Namespace) -> None:
    variants = parse_variants(args.variants)
    cases = parse_cases(args.cases, args.agents, args.viewers)
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) < 2:
        raise SystemExit("--pin needs two CPUs: one for the server, the rest for the viewers")
    viewer_cpus = set(cpus[1:]) if args.pin else None
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, tuple[asyncio.subprocess.Process, str]] = {}
        big = ""
        try:
            for name, (src, batch) in variants.items():
                data = Path(tmp) / name / "data"
                big = await seed_with(src, data)
                servers[name] = await start_server(data, src, batch)
                if args.pin:
                    pin(servers[name][0].pid, {cpus[0]})
            pages = None
            if not args.no_browser:
                url = next(iter(servers.values()))[1]
                pages = await asyncio.to_thread(browser_figures, url, big, 5)
            rounds: list[dict[str, dict[str, float]]] = []
            # 1 viewer; one viewer per agent (every event rendered once, as with 200); 200;
            # then the layouts asked for.
            runs = [(v, case) for case in cases for v in variants]
            for i in range(args.rounds):
                # Interleaved, the order turned every round: all see the same machine.
                order = runs[i % len(runs) :] + runs[: i % len(runs)]
                fig: dict[str, dict[str, float]] = {}
                for v, (n, over) in order:
                    proc, url = servers[v]
                    fig[f"{v}: {case_label((n, over), args.agents)}"] = await fan_out(
                        url, proc.pid, args.agents, n, args.seconds, min(n, args.workers),
                        over=over, viewer_cpus=viewer_cpus,
                    )  # fmt: skip
                rounds.append(fig)
                print(
                    f"round {i + 1}: "
                    + "; ".join(
                        f"{k}, p50 {f['p50_ms']:.1f} p99 {f['p99_ms']:.1f} ms cpu "
                        f"{f['cpu_pct']:.1f}% (sys {f['sys_pct']:.1f}%, "
                        f"steady {f['steady_pct']:.1f}%, end {f['end_cpu_ms']:.0f} ms) "
                        f"load {f['load']:.1f}"
                        for k, f in fig.items()
                    ),
                    flush=True,
                )
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                await proc.wait()
    if pages is not None:
        print(f"first contentful paint, dashboard (200 runs):   {pages['fcp_dashboard_ms']:.0f} ms")
        print(f"first contentful paint, run with 10,000 events: {pages['fcp_run_10k_ms']:.0f} ms")
        print(
            f"agent event -> browser DOM: p50 {pages['browser_p50_ms']:.1f} ms, "
            f"p99 {pages['browser_p99_ms']:.1f} ms ({pages['browser_events']:.0f} events)"
        )
    where = "the server on CPU 0, the viewers on the others" if args.pin else "no CPU pinning"
    print(
        f"{args.agents} agents at 5 events/s each, SSE delivery to the cockpit's run stream, "
        f"viewers in {args.workers} processes of their own ({where}); medians of "
        f"{args.rounds} interleaved rounds:"
    )
    med: dict[str, dict[str, float]] = {}
    figures = ["p50_ms", "p99_ms", "cpu_pct", "sys_pct", "steady_pct", "end_cpu_ms", "events"]
    for key in rounds[0]:
        med[key] = {k: statistics.median(r[key][k] for r in rounds) for k in [*figures, "load"]}
    loads = [r[k]["load"] for r in rounds for k in r]
    for v, (_, batch) in variants.items():
        if len(variants) > 1:
            print(
                f" {v}"
                + (f" (AGENTFARM_STREAM_BATCH_MS={batch})" if batch is not None else "")
                + ":"
            )
        for n, over in cases:
            m = med[f"{v}: {case_label((n, over), args.agents)}"]
            print(
                f"  {case_label((n, over), args.agents):>12}: p50 {m['p50_ms']:.1f} ms, "
                f"p99 {m['p99_ms']:.1f} ms, control-plane CPU {m['cpu_pct']:.1f}% of one core "
                f"(system {m['sys_pct']:.1f}%) ({m['events']:.0f} deliveries); while the "
                f"agents emit {m['steady_pct']:.1f}%, the runs' end {m['end_cpu_ms']:.0f} ms"
            )
        one, per_agent, many = (
            med[f"{v}: {case_label((n, args.agents), args.agents)}"]
            for n in (1, args.agents, args.viewers)
        )
        print(
            f"  CPU ratio {args.viewers} viewers / 1 viewer: "
            f"{many['cpu_pct'] / one['cpu_pct']:.2f}x; {args.viewers} / {args.agents} viewers: "
            f"{many['cpu_pct'] / per_agent['cpu_pct']:.2f}x; while the agents emit: "
            f"{many['steady_pct'] / one['steady_pct']:.2f}x"
        )
        # The same ratio within each round (its cases ran minutes apart at most): how far it
        # moves from one round to the next on this machine.
        ratios = sorted(
            r[f"{v}: {case_label((args.viewers, args.agents), args.agents)}"]["cpu_pct"]
            / r[f"{v}: {case_label((1, args.agents), args.agents)}"]["cpu_pct"]
            for r in rounds
        )
        low, high = median_interval(ratios)
        print(
            f"  the same ratio round by round: {', '.join(f'{x:.2f}' for x in ratios)}x "
            f"(median {statistics.median(ratios):.2f}x; 95 % bootstrap interval of the median "
            f"{low:.2f}-{high:.2f}x)"
        )
    print(f"  load average {min(loads):.1f}-{max(loads):.1f}")


def median_interval(values: list[float], draws: int = 10_000) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval for the median of ``values`` (the rounds
    resampled with replacement; a fixed seed, so that a run prints the same interval twice)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seed":
        print(asyncio.run(seed(Path(sys.argv[2]), 10_000, 200)))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--workers", type=int, default=4, help="viewer processes")
    parser.add_argument("--no-browser", action="store_true", help="only the SSE fan-out")
    parser.add_argument(
        "--variants",
        default="this",
        help='servers to compare, NAME=SRC[@BATCH_MS],... ("this" alone: this checkout\'s src)',
    )
    parser.add_argument(
        "--cases", default="", help="more viewer layouts, N or N/K (N viewers of the first K runs)"
    )
    parser.add_argument(
        "--pin", action="store_true", help="the server on CPU 0, the viewers on the others"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
