#!/usr/bin/python3
"""A fast scripted stand-in for the Claude Code CLI, for the benchmarks only: reads the prompt
line from stdin and prints stream-json events.

- By default N events as fast as it can, N from the environment (BENCH_EVENTS).
- With a prompt ``scale INTERVAL UNTIL`` (bench/scale.py): one event every INTERVAL seconds,
  each stamped ``ts:<emit time>``, until the wall-clock time UNTIL (quiet in between).
"""

import json
import os
import re
import sys
import time

prompt = sys.stdin.readline()
out = sys.stdout
out.write(json.dumps({"type": "system", "subtype": "init", "session_id": "s", "model": "m",
                      "tools": [], "cwd": "/workspace"}) + "\n")  # fmt: skip
out.flush()
paced = re.search(r"scale ([0-9.]+) ([0-9.]+)", prompt)
if paced:
    interval, until = float(paced.group(1)), float(paced.group(2))
    i = 0
    while time.time() + interval < until:
        time.sleep(interval)
        block = {"type": "text", "text": f"step {i} ts:{time.time():.6f}"}
        out.write(json.dumps({"type": "assistant", "message": {"id": f"m{i}", "content": [block]}}))
        out.write("\n")
        out.flush()
        i += 1
    time.sleep(max(0.0, until - time.time()))
else:
    for i in range(int(os.environ.get("BENCH_EVENTS", "2000"))):
        block = {"type": "text", "text": f"line {i} " + "x" * 80}
        message = {"id": f"msg_{i // 4}", "content": [block]}
        out.write(json.dumps({"type": "assistant", "message": message}) + "\n")
out.write(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "ok",
                      "num_turns": 1, "total_cost_usd": 0.0,
                      "usage": {"input_tokens": 1, "output_tokens": 1}}) + "\n")  # fmt: skip
out.flush()
