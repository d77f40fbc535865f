#!/usr/bin/python3
"""A fast scripted stand-in for the Claude Code CLI, for the ingest benchmark only: reads the
prompt line from stdin and prints N stream-json events as fast as it can. N comes from the
environment (BENCH_EVENTS)."""

import json
import os
import sys

sys.stdin.readline()
n = int(os.environ.get("BENCH_EVENTS", "2000"))
out = sys.stdout
out.write(json.dumps({"type": "system", "subtype": "init", "session_id": "s", "model": "m",
                      "tools": [], "cwd": "/workspace"}) + "\n")  # fmt: skip
for i in range(n):
    block = {"type": "text", "text": f"line {i} " + "x" * 80}
    message = {"id": f"msg_{i // 4}", "content": [block]}
    out.write(json.dumps({"type": "assistant", "message": message}) + "\n")
out.write(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "ok",
                      "num_turns": 1, "total_cost_usd": 0.0,
                      "usage": {"input_tokens": 1, "output_tokens": 1}}) + "\n")  # fmt: skip
out.flush()
