"""SSE viewers in a process of their own, for bench/cockpit.py: many connections to a run's
live stream in one small asyncio loop, each measuring the delay of every stamped event
(arrival time minus the ``ts:<time>`` the agent wrote). Standard library only, raw HTTP/1.1
with chunked decoding, so that the viewers cost as little CPU as possible and do not compete
with the server any more than real browsers on other machines would have to.

    python bench/sse_viewers.py [--api] URL TOKEN RUN_ID [RUN_ID ...]

One connection per RUN_ID given (repeat an id for several viewers of a run). Prints one JSON
object at the end: ``{"delays": [...], "connected": n, "ended": n, "errors": [...]}``.
``--api`` (bench/scale.py) reads the API's JSON stream (``/api/runs/<id>/events``) instead
of the cockpit's, ends at the run's terminal status, and also gives ``"stamps"``: each
event's ``[emitted, arrived]``, so that the caller can keep those of its steady window.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from urllib.parse import urlsplit

STAMP = re.compile(rb"ts:(\d+\.\d+)")
TERMINAL = re.compile(rb'"type": ?"run\.status".*"status": ?"(succeeded|failed|stopped|lost)"')


async def viewer(
    host: str,
    port: int,
    token: str,
    run_id: str,
    delays: list[float],
    ready: list[int],
    stamps: list[tuple[float, float]] | None = None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = (
            f"GET {'/api' if stamps is not None else ''}/runs/{run_id}/"
            f"{'events' if stamps is not None else 'live'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )
        writer.write(request.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{run_id}: {head.splitlines()[0]!r}")
        chunked = b"transfer-encoding: chunked" in head.lower()
        ready.append(1)
        pending = b""
        while True:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)
                now = time.time()
                pending += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
                now = time.time()
                pending += data
            pending = pending.replace(b"\r\n", b"\n")  # either line ending
            *messages, pending = pending.split(b"\n\n")
            for message in messages:
                emitted = [float(m) for m in STAMP.findall(message)]
                delays.extend(now - e for e in emitted)
                if stamps is not None:
                    stamps.extend((e, now) for e in emitted)
                    if TERMINAL.search(message):
                        return
                if message.startswith(b"event: end") or b"\nevent: end" in message:
                    return
    finally:
        writer.close()


async def main_async(
    url: str, token: str, run_ids: list[str], api: bool = False
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    delays: list[float] = []
    ready: list[int] = []
    stamps: list[tuple[float, float]] | None = [] if api else None
    results = await asyncio.gather(
        *(viewer(host, port, token, r, delays, ready, stamps) for r in run_ids),
        return_exceptions=True,
    )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    out: dict[str, object] = {"delays": delays, "connected": len(ready),
                              "ended": len(run_ids) - len(errors),
                              "errors": errors[:5]}  # fmt: skip
    if stamps is not None:
        out["stamps"] = stamps
    return out


def main() -> None:
    args = sys.argv[1:]
    api = args[:1] == ["--api"]
    url, token, *run_ids = args[1:] if api else args
    print(json.dumps(asyncio.run(main_async(url, token, run_ids, api))))


if __name__ == "__main__":
    main()
