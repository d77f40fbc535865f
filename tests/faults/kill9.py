"""``kill -9`` of the control plane at random moments, and the invariants checked after it.

A :class:`Campaign` owns the server process of one test: ``kill()`` sends SIGKILL (no shutdown
code runs), checks the database the dead server left (``PRAGMA integrity_check``) and starts a
new server on the same data directory. Every kill is logged with its phase, its drawn delay
and the seed, so a failure names the moment and ``AGENTFARM_FAULT_SEED`` replays the draws.

The invariants (``check_run``):
- every run reaches a terminal status within a bound (nothing stays queued, starting or
  running; a parked run resumes and then ends);
- its events have contiguous seqs from 1, one final status event, last, at most one
  ``run.branch`` event;
- the scripted agent numbers its lines (``line 1``, ``line 2``...): each appears exactly once
  and in order, all of them for a run that succeeded.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration.server import Server

TERMINAL = {"succeeded", "failed", "stopped", "lost"}

#: A command agent (``sh -c SCRIPT sh "<lines> <delay> <commit|-> "``): prints ``line 1`` to
#: ``line <lines>``, ``<delay>`` seconds apart, then commits one file when asked.
NUMBERED = r"""
set -e
set -- $1
n=$1; d=$2; c=$3
i=1
while [ "$i" -le "$n" ]; do
  echo "line $i"
  i=$((i + 1))
  [ "$d" = 0 ] || sleep "$d"
done
if [ "$c" = commit ]; then
  echo "$n lines" > numbered.txt
  git add numbered.txt
  git -c user.name=agent -c user.email=agent@example.invalid commit -qm "numbered $n"
fi
"""


def numbered_spec(source: str, lines: int, delay: float, *, commit: bool) -> dict[str, Any]:
    """A run of the numbered command agent on ``source``."""
    return {
        "repo": source,
        "prompt": f"{lines} {delay:g} {'commit' if commit else '-'}",
        "agent": "command",
        "command": {"argv": ["sh", "-c", NUMBERED, "sh"], "prompt": "argument"},
    }


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of the database a killed server left (its WAL included)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)


@dataclass
class Kill:
    phase: str
    delay: float
    note: str = ""


@dataclass
class Campaign:
    """One test's server, killed and restarted on the same data directory."""

    serve: Callable[..., Server]
    env: dict[str, str]
    seed: int
    server: Server = field(init=False)
    rng: random.Random = field(init=False)
    kills: list[Kill] = field(default_factory=list)
    #: How long each restart took to answer (seconds).
    restarts: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.server = self.serve(self.env)

    @property
    def db(self) -> Path:
        return self.server.data_dir / "agentfarm.db"

    def where(self) -> str:
        """What a failure message starts with: the seed and the kills so far."""
        recent = ", ".join(f"{k.phase}+{k.delay * 1000:.0f}ms{k.note}" for k in self.kills[-6:])
        slowest = max(self.restarts, default=0.0)
        return (
            f"AGENTFARM_FAULT_SEED={self.seed}, after {len(self.kills)} kills (last: {recent}; "
            f"slowest restart {slowest:.1f} s)"
        )

    def summary(self) -> str:
        """The kills by phase and the restarts' median and slowest time, for the log."""
        phases: dict[str, int] = {}
        for k in self.kills:
            phases[k.phase] = phases.get(k.phase, 0) + 1
        times = sorted(self.restarts) or [0.0]
        return (
            f"seed {self.seed}: {len(self.kills)} kills {phases}; restarts median "
            f"{times[len(times) // 2]:.2f} s, slowest {times[-1]:.2f} s"
        )

    def kill(self, phase: str, delay: float, note: str = "") -> None:
        """SIGKILL now, check the database it left, start a new server on it."""
        self.kill_only(phase, delay, note)
        self.restart()

    def kill_only(self, phase: str, delay: float, note: str = "") -> None:
        proc = self.server.proc
        assert proc is not None, "the server is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.server.proc = None
        self.kills.append(Kill(phase, delay, note))
        checked = integrity(self.db)
        assert checked == "ok", f"integrity_check: {checked} ({self.where()})"

    def restart(self) -> None:
        """A new server on the same data directory and port (webhooks keep reaching it)."""
        began = time.monotonic()
        self.server = self.serve(self.env, self.server.port)
        self.restarts.append(time.monotonic() - began)

    # -- the API, through whichever server is up --

    def get(self, path: str, **params: Any) -> Any:
        with self.server.client() as c:
            response = c.get(path, params=params)
            assert response.status_code == 200, (path, response.status_code, response.text)
            return response.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        with self.server.client() as c:
            return c.post(path, json=body or {})

    def run(self, run_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/api/runs/{run_id}")
        return found

    def events(self, run_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.get(f"/api/runs/{run_id}/events", after=out[-1]["seq"] if out else 0)
            if not page:
                return out
            out += page

    def stop_and_kill(self, run_id: str, phase: str) -> bool:
        """POST the run's stop in a thread and kill the server a few ms later; when no answer
        came, ask again after the restart (as a person or a script would). Whether the first
        stop was answered."""
        answered: list[int] = []
        url = f"{self.server.url}/api/runs/{run_id}/stop"
        headers = {"Authorization": "Bearer " + self.server.env["AGENTFARM_TOKEN"]}

        def ask() -> None:
            with contextlib.suppress(httpx.HTTPError):
                answered.append(httpx.post(url, headers=headers, timeout=10).status_code)

        asker = threading.Thread(target=ask)
        asker.start()
        delay = self.rng.uniform(0, 0.03)
        time.sleep(delay)
        self.kill(phase, delay, f" {run_id} answered={answered}")
        asker.join(15)
        if answered == [202]:
            return True
        response = self.post(f"/api/runs/{run_id}/stop")
        assert response.status_code in (202, 409), response.text
        return False

    def launch(self, spec: dict[str, Any]) -> str:
        response = self.post("/api/runs", {"spec": spec})
        assert response.status_code == 201, response.text
        run_id: str = response.json()["id"]
        return run_id

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what} ({self.where()})")
            time.sleep(0.02)

    def settle(self, run_ids: list[str], timeout: float = 90) -> dict[str, dict[str, Any]]:
        """Every run ended (a terminal status) within ``timeout``; the runs by id."""
        deadline = time.monotonic() + timeout
        while True:
            runs = {r: self.run(r) for r in run_ids}
            stuck = {r: v["status"] for r, v in runs.items() if v["status"] not in TERMINAL}
            if not stuck:
                return runs
            if time.monotonic() > deadline:
                raise AssertionError(f"runs stuck: {stuck} ({self.where()})")
            time.sleep(0.2)

    def explain(self, run: dict[str, Any]) -> str:
        """A failed check's message: the run's status, error and events, and the kills."""
        shown = [
            f"{e['seq']} {e['type']} {str(e['data'])[:160]}"
            for e in self.events(run["id"])
            if e["type"] != "agent.text"
        ]
        return (
            f"run {run['id']} {run['status']}: {run.get('error')}\n  "
            + "\n  ".join(shown)
            + f"\n{self.where()}"
        )

    def check_run(self, run: dict[str, Any], lines: int | None) -> list[dict[str, Any]]:
        """The invariants on one ended run's events (``lines``: how many the numbered agent
        prints, None for another agent); its events."""
        run_id = run["id"]
        found = self.events(run_id)
        context = f"run {run_id} ({run['status']}, {run.get('error')}) {self.where()}"
        seqs = [e["seq"] for e in found]
        assert seqs == list(range(1, len(found) + 1)), f"seqs not contiguous: {seqs} {context}"
        statuses = [e["data"]["status"] for e in found if e["type"] == "run.status"]
        assert statuses and statuses[-1] == run["status"], f"{statuses} {context}"
        assert [s for s in statuses if s in TERMINAL] == [run["status"]], f"{statuses} {context}"
        assert found[-1]["type"] == "run.status", f"{found[-1]} {context}"
        branches = [e for e in found if e["type"] == "run.branch"]
        assert len(branches) <= 1, f"{branches} {context}"
        if lines is not None:
            texts = [e["data"]["text"] for e in found if e["type"] == "agent.text"]
            expected = [f"line {i}" for i in range(1, len(texts) + 1)]
            assert texts == expected, f"agent lines lost, doubled or reordered: {texts} {context}"
            if run["status"] == "succeeded":
                assert len(texts) == lines, f"{len(texts)} of {lines} lines {context}"
        return found
