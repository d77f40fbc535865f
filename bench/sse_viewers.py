"""SSE viewers in a process of their own, for bench/cockpit.py: many connections to a run's
live stream in one small asyncio loop, each measuring the delay of every stamped event
(arrival time minus the ``ts:<time>`` the agent wrote). Standard library only, raw HTTP/1.1
with chunked decoding, so that the viewers cost as little CPU as possible and do not compete
with the server any more than real browsers on other machines would have to.

    python bench/sse_viewers.py URL TOKEN RUN_ID [RUN_ID ...]

One connection per RUN_ID given (repeat an id for several viewers of a run). Prints one JSON
object at the end: ``{"delays": [...], "connected": n, "ended": n, "errors": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from urllib.parse import urlsplit

STAMP = re.compile(rb"ts:(\d+\.\d+)")


async def viewer(
    host: str, port: int, token: str, run_id: str, delays: list[float], ready: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = (
            f"GET /runs/{run_id}/live HTTP/1.1\r\nHost: {host}:{port}\r\n"
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
                delays.extend(now - float(m) for m in STAMP.findall(message))
                if message.startswith(b"event: end") or b"\nevent: end" in message:
                    return
    finally:
        writer.close()


async def main_async(url: str, token: str, run_ids: list[str]) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    delays: list[float] = []
    ready: list[int] = []
    results = await asyncio.gather(
        *(viewer(host, port, token, r, delays, ready) for r in run_ids), return_exceptions=True
    )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"delays": delays, "connected": len(ready), "ended": len(run_ids) - len(errors),
            "errors": errors[:5]}  # fmt: skip


def main() -> None:
    url, token, *run_ids = sys.argv[1:]
    print(json.dumps(asyncio.run(main_async(url, token, run_ids))))


if __name__ == "__main__":
    main()
