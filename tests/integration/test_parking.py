"""Usage-limit parking and the watchdog, end to end: a real server process, the real Claude
Code CLI against the scripted fake model, real git and real bubblewrap.

The CLI reports a subscription's usage limit (``rate_limit_event``) only when it runs on a
subscription token, so this server gives agents ``CLAUDE_CODE_OAUTH_TOKEN``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api as fake
from tests.fakes.json_endpoint import JsonEndpoint
from tests.integration.conftest import git
from tests.integration.server import Server, events, post_run

pytestmark = pytest.mark.integration

TOKEN = "sk-ant-oat01-parking-secret-value"


@pytest.fixture
def start_server(
    claude_bin: str, fake_anthropic: fake.FakeAnthropic, serve: Callable[[dict[str, str]], Server]
) -> Callable[..., Server]:
    def start(**env: str) -> Server:
        return serve(
            {
                "AGENTFARM_CLAUDE_BIN": claude_bin,
                "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
                "CLAUDE_CODE_OAUTH_TOKEN": TOKEN,
                "AGENTFARM_STOP_GRACE_SECONDS": "3",
                "AGENTFARM_PARK_MARGIN_SECONDS": "0",
                **env,
            }
        )

    return start


class LimitOnce:
    """A scenario: write ``before.txt``; hit the usage limit, which resets ``reset_in`` seconds
    after it is first hit (or when ``lift`` is called); then write ``after.txt``, commit both
    and finish. The limit's time is fixed at its first request, so a slow start changes
    nothing."""

    def __init__(self, reset_in: float) -> None:
        self.reset_in = reset_in
        self.resets_at: float | None = None
        self.lifted = False
        self._lock = threading.Lock()

    def lift(self) -> None:
        self.lifted = True

    def __call__(self, _arg: str | None) -> Sequence[fake.Turn]:
        with self._lock:
            if self.resets_at is None:
                self.resets_at = time.time() + self.reset_in
            resets_at = self.resets_at
        turns = [fake.tool_use("Write", {"file_path": "before.txt", "content": "before\n"})]
        if not self.lifted:
            turns.append(fake.usage_limit(resets_at))
        turns += [
            fake.tool_use("Write", {"file_path": "after.txt", "content": "after\n"}),
            fake.tool_use(
                "Bash",
                {"command": "git add -A && git commit -q -m 'Both files'", "description": "Commit"},
            ),
            fake.text("Both files are written and committed."),
        ]
        return turns


def launch(srv: Server, source: Path, prompt: str, **spec: Any) -> dict[str, Any]:
    body = {
        "spec": {
            "repo": str(source),
            "prompt": prompt,
            "env": {"CLAUDE_CODE_MAX_RETRIES": "0"},
            **spec,
        }
    }
    return post_run(srv, body)


def session_ids(srv: Server, run_id: str) -> list[str]:
    return [e["data"]["session_id"] for e in events(srv, run_id) if e["type"] == "agent.init"]


def test_a_usage_limit_parks_the_run_and_it_finishes_after_the_reset(
    start_server: Callable[..., Server], source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    scenario = LimitOnce(reset_in=3)
    marker = fake_anthropic.register("limit-once", scenario)
    endpoint = JsonEndpoint()
    try:
        srv = start_server(
            AGENTFARM_NOTIFY_URLS=endpoint.url("/hook"),
            AGENTFARM_NOTIFY_EVENTS="run_finished,run_parked,run_resumed",
        )
        parks_and_resumes(srv, source, marker, fake_anthropic)
        # The park (with its reset time), the resume and the end arrive as notifications.
        titles = sorted(r.json()["title"].rsplit(" ", 1)[-1] for r in endpoint.wait_for(3))
        assert titles == ["parked", "resumed", "succeeded"]
        (park,) = [r.json() for r in endpoint.received if r.json()["title"].endswith("parked")]
        assert "it resumes by itself at " in park["message"] and " UTC" in park["message"]
    finally:
        endpoint.close()


def parks_and_resumes(
    srv: Server, source: Path, marker: str, fake_anthropic: fake.FakeAnthropic
) -> None:
    run = launch(srv, source, f"{marker} write two files")
    parked = srv.wait_status(run["id"], {"parked", "succeeded", "failed"})
    assert parked["status"] == "parked", parked
    assert parked["parked_until"] is not None
    assert parked["continuation"]["reason"] == "usage_limit"
    workspace = Path(parked["workspace"])
    assert (workspace / "before.txt").read_text() == "before\n"
    assert not (workspace / "after.txt").exists()
    listed = srv.cli("ls").stdout
    assert "parked until" in listed

    done = srv.wait_status(run["id"], {"succeeded", "failed", "stopped", "lost"})
    assert done["status"] == "succeeded", done
    assert done["workspace"] == parked["workspace"]
    assert done["continuation"]["parks"] == 1
    # One session, continued: the second process resumed the first one's.
    first, second = session_ids(srv, run["id"])
    assert first == second == done["session_id"]
    statuses = [e["data"]["status"] for e in events(srv, run["id"]) if e["type"] == "run.status"]
    assert statuses == ["queued", "starting", "running", "parked", "starting", "running",
                        "succeeded"]  # fmt: skip
    limits = [e["data"] for e in events(srv, run["id"]) if e["type"] == "agent.rate_limit"]
    assert [d["status"] for d in limits if d["status"] == "rejected"] == ["rejected"]
    # The work from before the park and after it is on the run's branch.
    files = git(source, "ls-tree", "--name-only", f"agentfarm/{run['id']}").split()
    assert {"before.txt", "after.txt"} <= set(files)
    assert git(source, "log", "-1", "--format=%s", f"agentfarm/{run['id']}").strip() == "Both files"
    # The resumed conversation carried the first process's tool result.
    resumed = fake_anthropic.requests_for("limit-once")[-1]
    assert "before.txt" in str(resumed.body)
    assert TOKEN not in srv.log.read_text()


def test_a_restart_while_parked_keeps_the_park_and_a_person_resumes_it(
    start_server: Callable[..., Server], source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    scenario = LimitOnce(reset_in=3600)
    marker = fake_anthropic.register("limit-restart", scenario)
    srv = start_server()
    run = launch(srv, source, f"{marker} write two files")
    parked = srv.wait_status(run["id"], {"parked", "succeeded", "failed"})
    assert parked["status"] == "parked", parked
    srv.kill()

    again = start_server()
    with again.client() as c:
        after = c.get(f"/api/runs/{run['id']}").json()
    assert after["status"] == "parked"
    assert after["parked_until"] == parked["parked_until"]
    with again.client() as c:
        other = c.post(f"/api/runs/{run['id']}/stop-nothing")
        assert other.status_code in (404, 405)
        refused = c.post("/api/runs/000000000000/resume")
        assert refused.status_code == 404

    scenario.lift()
    result = again.cli("resume", run["id"])
    assert result.returncode == 0, result.stderr
    done = again.wait_status(run["id"], {"succeeded", "failed", "stopped", "lost"})
    assert done["status"] == "succeeded", done
    assert done["parked_until"] is None
    files = git(source, "ls-tree", "--name-only", f"agentfarm/{run['id']}").split()
    assert {"before.txt", "after.txt"} <= set(files)
    again_refused = again.cli("resume", run["id"])
    assert again_refused.returncode != 0
    assert "only a parked run can be resumed" in again_refused.stderr + again_refused.stdout


def test_a_silent_model_stream_stalls_and_a_quiet_tool_does_not(
    start_server: Callable[..., Server], source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    stalls = fake_anthropic.register(
        "stalls-mid-message",
        [fake.stall(fake.Text("I will now"), fake.Text("never finish"), after=1)],
    )
    quiet = fake_anthropic.register(
        "quiet-tool",
        [
            fake.tool_use(
                "Bash", {"command": "sleep 4 && echo finished", "description": "A quiet build"}
            ),
            fake.text("The build finished."),
        ],
    )
    srv = start_server()
    watch = {"model_stall_seconds": 2, "tool_quiet_seconds": 600, "stall_resumes": 0}
    stalled = launch(srv, source, f"{stalls} say something", watchdog=watch)
    tool = launch(srv, source, f"{quiet} build it", watchdog=watch)
    done = srv.wait_status(stalled["id"], {"succeeded", "failed", "stopped", "lost"})
    assert done["status"] == "failed", done
    assert done["error"].startswith("stalled: no output for 2 s waiting for the model")
    built = srv.wait_status(tool["id"], {"succeeded", "failed", "stopped", "lost"})
    assert built["status"] == "succeeded", built
    results = [e for e in events(srv, tool["id"]) if e["type"] == "agent.tool_result"]
    assert "finished" in results[0]["data"]["content"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the agent's uid can read (pytest's tmp_path is private to the server's)."""
    path = Path(tempfile.mkdtemp(prefix="agentfarm-parking-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_result_then_a_process_that_does_not_exit_ends_on_its_result(
    start_server: Callable[..., Server], source: Path, shared_dir: Path, claude_bin: str
) -> None:
    # The CLI answers, then its wrapper keeps the process alive: the watchdog ends it.
    wrapper = shared_dir / "claude"
    wrapper.write_text(f'#!/bin/sh\n"{claude_bin}" "$@"\nexec sleep 600\n')
    wrapper.chmod(0o755)
    srv = start_server(AGENTFARM_CLAUDE_BIN=str(wrapper), AGENTFARM_RESULT_GRACE_SECONDS="2")
    run = launch(
        srv, source, f"{fake.marker('hello')} hello",
        backend={"type": "local", "sandbox": {"mode": "none"}},
    )  # fmt: skip
    done = srv.wait_status(run["id"], {"succeeded", "failed", "stopped", "lost"})
    assert done["status"] == "succeeded", (done, events(srv, run["id"]))
    notices = [e["data"]["message"] for e in events(srv, run["id"]) if e["type"] == "run.notice"]
    assert any("reported its result but had not exited 2 s later" in n for n in notices)
