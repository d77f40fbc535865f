"""What a running run holds in the control plane, by source file: a tracemalloc diff taken
with N runs of a paced scripted agent running (the package's fake backend, in this process,
no viewer), divided by N; then again once they have all ended (what is left behind).

    .venv/bin/python bench/scale_memory.py [--runs 500] [--interval 0.5] [--top 15]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, _FakeRun
from agentfarm.domain import models
from agentfarm.settings import Settings
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web.app import create_app


class PacedBackend(FakeBackend):
    """Each run: an init line, one stamped assistant line every INTERVAL s until UNTIL."""

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


def by_file(diff: list[tracemalloc.StatisticDiff], top: int, runs: int) -> None:
    for stat in diff[:top]:
        where = stat.traceback[0].filename
        where = where.split("site-packages/")[-1].split("/src/")[-1]
        print(f"  {stat.size_diff / runs / 1024:8.1f} KiB/run  {stat.count_diff / runs:7.1f} "
              f"blocks/run  {where}")  # fmt: skip


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate(
            {
                "data_dir": tmp,
                "token": "bench-token-0123456789",
                "claude_bin": "/bin/true",
                "anthropic_api_key": "sk-bench-0000000000",
                "max_concurrent_runs": args.runs + 10,
                "max_queued_runs": args.runs + 10,
            }
        )
        backend = PacedBackend(script=lambda run, _cmd: run.prompt)  # type: ignore[arg-type,return-value]
        app = create_app(settings, backends={"local": backend})
        async with app.router.lifespan_context(app):
            sup: Supervisor = app.state.supervisor
            store = app.state.store
            await asyncio.sleep(1)
            gc.collect()
            before = tracemalloc.take_snapshot()
            until = time.time() + args.seconds
            spec = models.AgentSpec(repo="/srv/repo", prompt=f"scale {args.interval} {until:.3f}")
            runs = [await sup.submit(spec) for _ in range(args.runs)]
            while True:
                await asyncio.sleep(1)
                seqs = [await store.last_seq(r.id) for r in runs]
                if min(seqs) >= args.events or time.time() > until - 5:
                    break
            gc.collect()
            during = tracemalloc.take_snapshot()
            diff = during.compare_to(before, "filename")
            total = sum(s.size_diff for s in diff)
            per_run = total / args.runs / 1024
            print(f"{args.runs} runs running, {min(seqs)}+ events each: {per_run:.1f} KiB per run")
            by_file(diff, args.top, args.runs)
            await asyncio.sleep(max(0.0, until - time.time()) + 10)
            ended = [(await store.get_run(r.id)).status.terminal for r in runs]
            print(f"{ended.count(True)} of {len(runs)} runs ended")
            gc.collect()
            after = tracemalloc.take_snapshot()
            diff = after.compare_to(before, "filename")
            total = sum(s.size_diff for s in diff)
            print(f"after they ended: {total / args.runs / 1024:.1f} KiB per run left, by file:")
            by_file(diff, 5, args.runs)
            await backend.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--events", type=int, default=20, help="events per run before measuring")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long each run goes")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    tracemalloc.start()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
