"""Agents that misbehave, through the real local backend (real bubblewrap sandbox, monitor and
cgroups) and a real server process: one that crashes mid-line, one that hangs, one that floods
100 MB of output, one that forks until its process limit. Each time the run ends with a reason
that says what happened, nothing of the agent is left on the host, and the control plane keeps
answering with bounded memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import Serve
from tests.faults.fault_kit import (
    FINAL,
    answers,
    events,
    launch,
    marker,
    peak_rss_kib,
    run_processes,
    stop_active,
    wait_for,
)
from tests.integration.server import Server

#: How much the server's peak memory may grow while an agent floods it: the point is that the
#: growth does not follow the output's size. One line is cut into records of at most 64 MiB
#: (``frames.MAX_PAYLOAD``: a stream-json line may be that big), and the server holds such a
#: record about three times while it cuts it to 64 KiB (the bytes, their text, the text encoded
#: again to be cut): 1,000 lines of 100 KB grow it by about 50 MB, one line of 100 MB by about
#: 200 MB (measured), whatever comes after.
FLOOD_RSS_GROWTH_KIB = 256 * 1024


#: The watchdog's limit for the agents that hang (the flood's, slow on a busy machine, keeps
#: the default).
QUIET = {"tool_quiet_seconds": 3}


@pytest.fixture
def server(serve: Serve) -> Iterator[Server]:
    srv = serve({"AGENTFARM_STALL_RESUMES": "0"})
    yield srv
    stop_active(srv)


def texts(srv: Server, run_id: str) -> list[str]:
    return [e["data"]["text"] for e in events(srv, run_id) if e["type"] == "agent.text"]


def test_an_agent_that_crashes_mid_line_fails_saying_how_and_keeps_its_half_line(
    server: Server, source: Path
) -> None:
    argv = ["sh", "-c", "echo first; printf 'half a line'; kill -SEGV $$"]
    run_id = launch(server, source, argv)
    run = server.wait_status(run_id, FINAL, timeout=60)
    assert run["status"] == "failed", run
    assert "SIGSEGV" in run["error"] or "signal 11" in run["error"], run
    assert texts(server, run_id) == ["first", "half a line"]
    # The next run is not affected.
    after = launch(server, source, ["sh", "-c", "echo fine"])
    assert server.wait_status(after, FINAL, timeout=60)["status"] == "succeeded"


def test_an_agent_that_hangs_is_ended_by_the_watchdog_and_leaves_nothing(
    server: Server, source: Path
) -> None:
    sleeps = marker()  # sleep's argument: finds the agent's process on the host
    argv = ["sh", "-c", f"echo working; exec sleep {sleeps}"]
    run_id = launch(server, source, argv, watchdog=QUIET)
    wait_for(lambda: bool(run_processes(sleeps)), 60, "the hanging agent to start")
    run = server.wait_status(run_id, FINAL, timeout=60)
    assert run["status"] == "failed", run
    assert "stalled" in (run["error"] or "") or run.get("reason") == "stalled", run
    wait_for(lambda: not run_processes(sleeps), 15, "the hanging agent's processes to go")
    assert answers(server)


#: 100 MB in 1,000 lines of 100 KB; and 100 MB without a single newline.
FLOOD_LINES = "yes \"$(head -c 102399 /dev/zero | tr '\\0' x)\" | head -n 1000"
FLOOD_ONE_LINE = "head -c 104857600 /dev/zero | tr '\\0' y"


@pytest.mark.parametrize("script", [FLOOD_LINES, FLOOD_ONE_LINE], ids=["lines", "one-line"])
def test_a_flood_of_100_mb_keeps_the_control_plane_bounded_and_answering(
    server: Server, source: Path, script: str
) -> None:
    before = peak_rss_kib(server)
    run_id = launch(server, source, ["sh", "-c", script])
    seen_answering = False
    status = ""
    while status not in FINAL:
        seen_answering = answers(server) or seen_answering
        status = server.wait_status(run_id, FINAL | {"running", "starting", "queued"})["status"]
    run = server.wait_status(run_id, FINAL, timeout=300)
    assert seen_answering and answers(server)
    growth = peak_rss_kib(server) - before
    assert growth < FLOOD_RSS_GROWTH_KIB, f"the server grew {growth} KiB while flooded"
    assert run["status"] in {"succeeded", "stopped"}, (run["status"], run["error"])
    shown = texts(server, run_id)
    assert shown, "the flood's lines are shown, cut down"
    assert all(len(text.encode()) <= 70 * 1024 for text in shown), "every line is capped"
    assert any("truncated" in text for text in shown)


def test_a_fork_bomb_stops_at_its_process_limit_and_the_host_is_unaffected(
    server: Server, source: Path
) -> None:
    sleeps = marker()
    # An inner shell forks sleepers until fork fails (and the shell exits on it); the outer
    # one says so and waits.
    bomb = (
        f"echo forking; sh -c 'while :; do sleep {sleeps} & done' 2>/dev/null; "
        'echo "fork refused: $?"; exec sleep 3600'
    )
    backend = {"type": "local", "sandbox": {"pids": 64}}
    run_id = launch(
        server,
        source,
        ["sh", "-c", bomb],
        backend=backend,
        watchdog=QUIET,
    )
    wait_for(
        lambda: any(t.startswith("fork refused") for t in texts(server, run_id)),
        60,
        "the fork bomb to reach its limit",
    )
    assert answers(server)
    sleepers = len(run_processes(sleeps))
    assert 0 < sleepers < 64, f"{sleepers} processes under a limit of 64"
    run = server.wait_status(run_id, FINAL, timeout=60)
    assert run["status"] == "failed", run
    said = [json.dumps(e["data"]) for e in events(server, run_id) if e["type"] == "run.notice"]
    assert any("process limit (64)" in text for text in said), said
    wait_for(lambda: not run_processes(sleeps), 15, "every forked process to go")
