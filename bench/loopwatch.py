"""Where a server's event loop stalls, for bench/scale.py (``--loopwatch FILE``): a thread in
the server process samples the main thread's stack every 2 ms. A sample whose innermost frame
is the loop's wait (``select``/``poll``) is idle; a run of busy samples longer than the
threshold is a stall, written as one JSON line (start, length, samples, the stacks seen most
often in it, the collector's collections meanwhile). Loop-agnostic (no hook in asyncio or
uvloop), so it sees what the unmodified server does; the sampler itself takes the GIL briefly
every 2 ms (about 1-2 % of a core).

    python -c "import loopwatch; loopwatch.install('/tmp/stalls.jsonl'); ..."
"""

from __future__ import annotations

import collections
import gc
import json
import sys
import threading
import time
import traceback
from types import FrameType

PERIOD = 0.002
THRESHOLD = 0.020
IDLE_NAMES = {"select", "poll", "_run_once"}


def _stack(frame: FrameType | None, depth: int = 14) -> tuple[str, ...]:
    out = []
    for summary in traceback.extract_stack(frame, limit=depth)[::-1]:
        out.append(f"{summary.filename.rsplit('/', 2)[-1]}:{summary.lineno} {summary.name}")
    return tuple(out)


def _idle(frame: FrameType | None) -> bool:
    # The innermost Python frame while the loop waits is the selector's select()
    # (selectors.py) called from _run_once: C code below it does not show.
    return (
        frame is not None
        and frame.f_code.co_name == "select"
        and "selectors" in (frame.f_code.co_filename)
    )


def install(path: str) -> None:
    main_id = threading.main_thread().ident
    gcs = [0]
    gc.callbacks.append(lambda phase, info: gcs.__setitem__(0, gcs[0] + (phase == "start")))

    def sample() -> None:
        out = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        start: float | None = None
        stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
        n = 0
        gc0 = 0
        while True:
            time.sleep(PERIOD)
            frame = sys._current_frames().get(main_id)  # type: ignore[arg-type]
            now = time.time()
            if _idle(frame):
                if start is not None and now - start >= THRESHOLD:
                    top = [[c, list(s)] for s, c in stacks.most_common(3)]
                    out.write(json.dumps({"start": start, "ms": (now - start) * 1000,
                                          "samples": n, "gcs": gcs[0] - gc0,
                                          "top": top}) + "\n")  # fmt: skip
                start = None
                continue
            if start is None:
                start, n, gc0 = now, 0, gcs[0]
                stacks.clear()
            n += 1
            stacks[_stack(frame)] += 1

    threading.Thread(target=sample, name="loopwatch", daemon=True).start()
