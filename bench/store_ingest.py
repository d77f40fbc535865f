"""Event ingest throughput of the store: events/s by batch size, for 1 and 20 concurrent runs.

Each append is what the supervisor does: a batch of drafts plus the new backend cursor, in one
transaction. Prints figures only.

    PYTHONPATH=src .venv/bin/python bench/store_ingest.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from agentfarm.domain import models
from agentfarm.store import Store

PAYLOAD = {
    "text": "I'll look at the failing test first, then fix the off-by-one in the parser. " * 3,
    "message_id": "msg_01ABCDEF",
    "index": 0,
}


async def ingest(store: Store, run_id: str, batch: int, deadline: float) -> int:
    drafts = [models.EventDraft(type="agent.text", data=PAYLOAD) for _ in range(batch)]
    cursor = written = 0
    while time.perf_counter() < deadline:
        cursor += 512 * batch
        await store.append_events(run_id, drafts, cursor=cursor)
        written += batch
    return written


async def measure(directory: Path, runs: int, batch: int, seconds: float) -> float:
    store = await Store.open(directory / f"bench-{runs}-{batch}.db")
    try:
        ids = [
            (await store.create_run(models.Run(spec=models.AgentSpec(repo="/r")))).id
            for _ in range(runs)
        ]
        start = time.perf_counter()
        counts = await asyncio.gather(
            *(ingest(store, run_id, batch, start + seconds) for run_id in ids)
        )
        elapsed = time.perf_counter() - start
        for run_id, count in zip(ids, counts, strict=True):
            if await store.last_seq(run_id) != count:
                raise SystemExit(f"lost events for run {run_id}")
        return sum(counts) / elapsed
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measure")
    args = parser.parse_args()
    print(f"{'batch':>6} {'runs':>5} {'events/s':>12} {'appends/s':>10}")
    with tempfile.TemporaryDirectory(prefix="agentfarm-bench-") as tmp:
        for batch in (1, 10, 100, 200):
            for runs in (1, 20):
                rate = await measure(Path(tmp), runs, batch, args.seconds)
                print(f"{batch:>6} {runs:>5} {rate:>12,.0f} {rate / batch:>10,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
