"""``kill -9`` of the control plane around the real Claude Code CLI (against the scripted fake
model): while a run is parked on its usage limit, around the moment it resumes, during a stop
of a running run and of a parked one, and while the CLI streams. A parked run must resume
after the restart and finish in the same session with both processes' work committed; a
stopped run must end ``stopped``; no event may be stored twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fakes import anthropic_api as fake
from tests.faults.conftest import Serve
from tests.faults.kill9 import Campaign

TOKEN = "sk-ant-oat01-kill9-secret-value"


class LimitOnce:
    """Write ``before.txt``; hit the usage limit (resetting ``reset_in`` s after it is first
    hit); then write ``after.txt``, commit both and finish."""

    def __init__(self, reset_in: float) -> None:
        self.reset_in = reset_in
        self.resets_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, _arg: str | None) -> Sequence[fake.Turn]:
        with self._lock:
            if self.resets_at is None:
                self.resets_at = time.time() + self.reset_in
        return [
            fake.tool_use("Write", {"file_path": "before.txt", "content": "before\n"}),
            fake.usage_limit(self.resets_at),
            fake.tool_use("Write", {"file_path": "after.txt", "content": "after\n"}),
            fake.tool_use(
                "Bash",
                {"command": "git add -A && git commit -q -m 'Both files'", "description": "Commit"},
            ),
            fake.text("Both files are written and committed."),
        ]


def counting(steps: int, pause: float) -> Sequence[fake.Turn]:
    """``steps`` turns of text and a cheap tool, ``pause`` s apart; then a commit."""
    turns = [
        fake.delay(
            pause,
            fake.turn(
                fake.Text(f"Step {i}."),
                fake.ToolUse("Bash", {"command": "true", "description": "s"}),
            ),
        )
        for i in range(steps)
    ]
    commit = "echo done > counted.txt && git add -A && git commit -q -m Counted"
    return [
        *turns,
        fake.tool_use("Bash", {"command": commit, "description": "Commit"}),
        fake.text("Counted."),
    ]


@dataclass
class Subject:
    run_id: str
    expect: str
    #: Processes the run must have had (agent.init events, all one session).
    processes: int = 1


def launch(campaign: Campaign, source: Path, prompt: str) -> str:
    spec = {"repo": str(source), "prompt": prompt, "env": {"CLAUDE_CODE_MAX_RETRIES": "0"}}
    return campaign.launch(spec)


def status_is(campaign: Campaign, run_id: str, *wanted: str) -> dict[str, Any] | None:
    run = campaign.run(run_id)
    return run if run["status"] in wanted else None


def test_kill9_while_parked_at_resume_during_stops_and_streaming(
    serve: Serve,
    source: Path,
    claude_bin: str,
    fake_anthropic: fake.FakeAnthropic,
    fault_seed: int,
) -> None:
    env = {
        "AGENTFARM_CLAUDE_BIN": claude_bin,
        "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
        "CLAUDE_CODE_OAUTH_TOKEN": TOKEN,
        "AGENTFARM_STOP_GRACE_SECONDS": "2",
        "AGENTFARM_PARK_MARGIN_SECONDS": "0",
        "AGENTFARM_MAX_CONCURRENT_RUNS": "8",
    }
    campaign = Campaign(serve, env, fault_seed)
    rng = campaign.rng
    tag = f"{fault_seed}"
    subjects: list[Subject] = []

    # Three runs that park: one killed while parked, two killed around their resume (their
    # resets far enough apart for a restart in between).
    parking = []
    for i, reset_in in enumerate((12, 16, 24)):
        marker = fake_anthropic.register(f"k9-limit-{tag}-{i}", LimitOnce(reset_in))
        run_id = launch(campaign, source, f"{marker} write two files")
        parking.append(run_id)
        subjects.append(Subject(run_id, "succeeded", processes=2))
    parked = [
        campaign.wait_for(f"{r} to park", lambda r=r: status_is(campaign, r, "parked"), 90)
        for r in parking
    ]
    delay = rng.uniform(0, 1.0)
    time.sleep(delay)
    campaign.kill("parked", delay, f" {parking[0]}")
    delay = rng.uniform(0, 0.3)  # and again while the new server reattaches
    time.sleep(delay)
    campaign.kill("reattach", delay)
    for run in parked[1:]:
        # Around the reset: just before, as the timer fires, or while the new process starts.
        until = datetime.fromisoformat(run["parked_until"]).timestamp()
        offset = rng.uniform(-0.1, 0.8)
        time.sleep(max(0.0, until + offset - time.time()))
        campaign.kill("at resume", offset, f" {run['id']}")

    # One that streams for a while, killed mid-stream; one to stop while it works.
    marker = fake_anthropic.register(f"k9-count-{tag}", counting(12, 0.15))
    streaming = launch(campaign, source, f"{marker} count")
    subjects.append(Subject(streaming, "succeeded"))
    stopping = launch(campaign, source, f"{fake.marker('sleep')} wait")
    subjects.append(Subject(stopping, "stopped"))
    campaign.wait_for(
        f"{streaming} to stream",
        lambda: any(e["type"] == "agent.text" for e in campaign.events(streaming)),
        timeout=90,
    )
    delay = rng.uniform(0, 1.0)
    time.sleep(delay)
    campaign.kill("claude streaming", delay, f" {streaming}")
    delay = rng.uniform(0, 0.3)
    time.sleep(delay)
    campaign.kill("reattach", delay)
    campaign.wait_for(
        f"{stopping} to run its tool",
        lambda: any(e["type"] == "agent.tool_call" for e in campaign.events(stopping)),
        timeout=90,
    )
    campaign.stop_and_kill(stopping, "stop of a running claude")

    # A run stopped while parked, the kill during the stop.
    marker = fake_anthropic.register(f"k9-limit-{tag}-stop", LimitOnce(60))
    parked_stop = launch(campaign, source, f"{marker} write two files")
    subjects.append(Subject(parked_stop, "stopped"))
    campaign.wait_for(
        f"{parked_stop} to park", lambda: status_is(campaign, parked_stop, "parked"), 90
    )
    campaign.stop_and_kill(parked_stop, "stop of a parked claude")

    runs = campaign.settle([s.run_id for s in subjects], timeout=180)
    for subject in subjects:
        run = runs[subject.run_id]
        found = campaign.check_run(run, None)
        assert run["status"] == subject.expect, campaign.explain(run)
        sessions = [e["data"]["session_id"] for e in found if e["type"] == "agent.init"]
        if subject.expect == "succeeded":
            assert len(sessions) == subject.processes, (sessions, campaign.explain(run))
            assert set(sessions) == {run["session_id"]}, (sessions, campaign.explain(run))
        # Each block of each model message is one event: none twice.
        blocks = [
            (e["data"]["message_id"], e["data"]["index"])
            for e in found
            if e["type"] in ("agent.text", "agent.thinking", "agent.tool_call")
        ]
        assert len(blocks) == len(set(blocks)), (blocks, campaign.explain(run))
        results = [e["data"]["id"] for e in found if e["type"] == "agent.tool_result"]
        assert len(results) == len(set(results)), (results, campaign.explain(run))
    for run_id in parking:
        run = runs[run_id]
        assert run["continuation"]["parks"] == 1, campaign.explain(run)
        workspace = Path(run["workspace"])
        assert (workspace / "before.txt").exists() and (workspace / "after.txt").exists()
    print(campaign.summary())
