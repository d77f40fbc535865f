"""The records between a run's backend and its ingest are bounded in bytes, not only in
number: a flood of long lines waits in the pump instead of filling the control plane."""

from __future__ import annotations

import asyncio

from agentfarm.backends.base import Record
from agentfarm.supervisor import ingest


async def test_the_pump_waits_when_the_queued_bytes_are_over_the_bound() -> None:
    pipe = ingest._Pipe()
    big = Record(1, "stdout", b"x" * (ingest.QUEUE_BYTES // 2))
    await pipe.put(big)
    await pipe.put(big)
    third = asyncio.ensure_future(pipe.put(big))
    await asyncio.sleep(0.01)
    assert not third.done() and pipe.bytes == ingest.QUEUE_BYTES
    pipe.taken(pipe.queue.get_nowait())
    await asyncio.wait_for(third, 5)
    assert pipe.bytes == ingest.QUEUE_BYTES and pipe.queue.qsize() == 2


async def test_one_record_over_the_bound_still_passes_alone() -> None:
    pipe = ingest._Pipe()
    await asyncio.wait_for(pipe.put(Record(1, "stdout", b"y" * (ingest.QUEUE_BYTES * 2))), 5)
    assert pipe.taken(pipe.queue.get_nowait()) == ingest.QUEUE_BYTES * 2 and pipe.bytes == 0
