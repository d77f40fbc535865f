"""``kill -9`` of the control plane at random moments of runs of a scripted command agent (the
cheap bulk of the kills): during a launch, while the agent emits, during a stop request and
while the restarted server reattaches its runs. After each kill the database must pass
``PRAGMA integrity_check``; at the end every run must have ended with its numbered lines each
stored once and in order, a stop that was answered must have stopped its run, and a run that
committed must have its one commit on its branch in the source repository.

``AGENTFARM_FAULT_KILLS`` changes the number of kills (default 72; with the pipeline's 20 and
the Claude runs' 8, the suite kills the server 100 times).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.faults.conftest import Serve
from tests.faults.kill9 import Campaign, numbered_spec

KILLS = int(os.environ.get("AGENTFARM_FAULT_KILLS", "72"))
PHASES = ("launch", "ingest", "stop", "reattach")


@dataclass
class Subject:
    run_id: str
    lines: int
    commit: bool
    #: A stop was asked; ``stop_answered``: the server said 202 before it was killed.
    stop_asked: bool = False
    stop_answered: bool = False


def has_output(campaign: Campaign, run_id: str) -> bool:
    return any(e["type"] == "agent.text" for e in campaign.events(run_id))


def branch_log(source: Path, branch: str) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(source), "log", "--format=%s", branch],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.splitlines() if out.returncode == 0 else []


def test_kill9_during_launch_ingest_stop_and_reattach(
    serve: Serve, source: Path, fault_seed: int
) -> None:
    campaign = Campaign(
        serve,
        {"AGENTFARM_STOP_GRACE_SECONDS": "2", "AGENTFARM_MAX_CONCURRENT_RUNS": "16"},
        fault_seed,
    )
    rng = campaign.rng
    subjects: list[Subject] = []
    repo = str(source)

    for _ in range(KILLS):
        phase = rng.choice(PHASES)
        if phase == "launch":
            # Killed between the answer to POST /api/runs and a few hundred ms later: queued,
            # starting (clone, monitor) or just running.
            lines, commit = rng.randint(5, 40), rng.random() < 0.5
            run_id = campaign.launch(numbered_spec(repo, lines, 0.01, commit=commit))
            subjects.append(Subject(run_id, lines, commit))
            delay = rng.choice([0.0, rng.uniform(0, 0.05), rng.uniform(0, 0.4)])
            time.sleep(delay)
            campaign.kill(phase, delay, f" {run_id}")
        elif phase == "ingest":
            # Killed while the agent emits: the spool grows while no one reads it.
            lines, commit = rng.randint(30, 120), rng.random() < 0.5
            delay_between = rng.choice([0.0, 0.005, 0.01])
            spec = numbered_spec(repo, lines, delay_between, commit=commit)
            run_id = campaign.launch(spec)
            subjects.append(Subject(run_id, lines, commit))
            campaign.wait_for(f"{run_id} to emit", lambda r=run_id: has_output(campaign, r))
            delay = rng.uniform(0, 0.4)
            time.sleep(delay)
            campaign.kill(phase, delay, f" {run_id}")
        elif phase == "stop":
            # Killed during a stop request: before, while or after the server answers it;
            # a third of them asked while the run is still starting (no agent process yet).
            run_id = campaign.launch(numbered_spec(repo, 2000, 0.05, commit=False))
            subject = Subject(run_id, 2000, False, stop_asked=True)
            subjects.append(subject)
            if rng.random() < 2 / 3:
                campaign.wait_for(f"{run_id} to emit", lambda r=run_id: has_output(campaign, r))
            subject.stop_answered = campaign.stop_and_kill(run_id, phase)
        else:
            # Killed again while the new server reattaches the runs of the last one.
            delay = rng.uniform(0, 0.3)
            time.sleep(delay)
            campaign.kill(phase, delay)

    runs = campaign.settle([s.run_id for s in subjects], timeout=120)
    for subject in subjects:
        run = runs[subject.run_id]
        campaign.check_run(run, subject.lines)
        if subject.stop_asked:
            assert run["status"] == "stopped", campaign.explain(run)
            continue
        assert run["status"] == "succeeded", campaign.explain(run)
        log = branch_log(source, run["branch"])
        if subject.commit:
            assert log == [f"numbered {subject.lines}", "initial"], (run, log, campaign.where())
        else:
            assert log == ["initial"], (run, log, campaign.where())
    print(campaign.summary())
