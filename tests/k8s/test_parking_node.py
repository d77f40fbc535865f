"""Usage-limit parking on the kubernetes backend, through the API, on a real node (tier B):
the real Claude Code CLI in a real pod hits the fake model's usage limit (a 429 with the
usage headers, as tests/integration/test_parking.py does on the local backend); the run parks
and resumes IN ITS POD (same workspace, same HOME with the session's transcript, same
branch), by itself at the reset, after a restart of the control plane, or not at all when a
person stops it. (An ended pod run continued with a new prompt goes on in a new pod:
tests/k8s/test_continue_node.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api
from tests.integration.server import Server
from tests.integration.test_parking import LimitOnce
from tests.k8s import cluster
from tests.k8s.agentimage import AgentWorld, agent_world
from tests.k8s.test_api_node import TERMINAL, launch, pod_status, stored_events

#: The CLI reports a usage limit (``rate_limit_event``) only on a subscription token.
TOKEN = "sk-ant-oat01-k8s-parking-secret-value"


@pytest.fixture(scope="module")
def world(
    k8s_node: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentWorld]:
    work = tmp_path_factory.mktemp("k8s-parking-node")
    with agent_world(k8s_node, work, "parking-node-test") as w:
        yield w


@pytest.fixture
def start_server(world: AgentWorld, tmp_path: Path) -> Iterator[Callable[[], Server]]:
    servers: list[Server] = []

    def start() -> Server:
        env = world.server_env()
        del env["ANTHROPIC_API_KEY"]
        env |= {"CLAUDE_CODE_OAUTH_TOKEN": TOKEN, "AGENTFARM_PARK_MARGIN_SECONDS": "0"}
        srv = Server(tmp_path / "data", env, tmp_path / "server.log").start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def events_of(srv: Server, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in stored_events(srv, run_id) if e["type"] == kind]


def parked(srv: Server, world: AgentWorld, marker: str) -> dict[str, Any]:
    run = launch(srv, world, f"{marker} write two files")
    found = srv.wait_status(run["id"], {"parked"} | TERMINAL, timeout=180)
    assert found["status"] == "parked", (found, stored_events(srv, run["id"]))
    assert found["parked_until"] is not None
    assert found["continuation"]["reason"] == "usage_limit"
    assert pod_status(world.node, world.namespace, run["id"]) == 200  # the pod waits
    return found


def finished_in_its_pod(srv: Server, world: AgentWorld, run: dict[str, Any], name: str) -> None:
    done = srv.wait_status(run["id"], TERMINAL, timeout=240)
    assert done["status"] == "succeeded", (done, stored_events(srv, run["id"]))
    assert done["workspace"] == run["workspace"]
    assert done["continuation"]["parks"] == 1
    # One session, continued in the same HOME: the second process resumed the first one's.
    first, second = (d["session_id"] for d in events_of(srv, run["id"], "agent.init"))
    assert first == second == done["session_id"]
    statuses = [d["status"] for d in events_of(srv, run["id"], "run.status")]
    assert statuses == ["queued", "starting", "running", "parked", "starting", "running",
                        "succeeded"]  # fmt: skip
    notices = [d["message"] for d in events_of(srv, run["id"], "run.notice")]
    assert any(n.startswith("resumed the agent in its pod ") for n in notices), notices
    assert any(n.startswith(f"pushed 1 commit(s) to agentfarm/{run['id']}") for n in notices)
    (outcome,) = events_of(srv, run["id"], "run.branch")
    assert outcome["pushed"] is True and outcome["commits"] == 1
    # The file written before the park was still in the workspace when the commit was made.
    branch = f"agentfarm/{run['id']}"
    assert world.branch_file(branch, "before.txt") == "before\n"
    assert world.branch_file(branch, "after.txt") == "after\n"
    assert world.branch_log(branch) == ["Both files", "init"]
    # The resumed conversation carried the first process's tool result (the transcript in
    # the pod's HOME).
    assert "before.txt" in str(world.fake.requests_for(name)[-1].body)
    assert TOKEN not in srv.log.read_text()


def test_a_usage_limit_parks_a_pod_run_that_resumes_in_its_pod(
    start_server: Callable[[], Server], world: AgentWorld
) -> None:
    marker = world.fake.register("k8s-limit-once", LimitOnce(reset_in=4))
    srv = start_server()
    started = time.monotonic()
    run = parked(srv, world, marker)
    finished_in_its_pod(srv, world, run, "k8s-limit-once")
    print(f"launch -> park -> resume -> succeeded in {time.monotonic() - started:.1f} s")
    deadline = time.monotonic() + 90
    while pod_status(world.node, world.namespace, run["id"]) != 404:  # finished, then deleted
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_a_parked_pod_run_survives_a_restart_and_resumes_in_its_pod(
    start_server: Callable[[], Server], world: AgentWorld
) -> None:
    # The reset outlasts a restart of the control plane on a busy machine.
    marker = world.fake.register("k8s-limit-restart", LimitOnce(reset_in=30))
    srv = start_server()
    run = parked(srv, world, marker)
    srv.kill()  # the control plane dies while the run is parked
    time.sleep(1.0)
    srv.start()
    assert srv.wait_status(run["id"], TERMINAL | {"parked"}, timeout=30)["status"] == "parked"
    finished_in_its_pod(srv, world, run, "k8s-limit-restart")


def test_stopping_a_parked_pod_run_ends_it_and_its_pod(
    start_server: Callable[[], Server], world: AgentWorld
) -> None:
    marker = world.fake.register("k8s-limit-stop", LimitOnce(reset_in=3600))
    srv = start_server()
    run = parked(srv, world, marker)
    with srv.client() as c:
        response = c.post(f"/api/runs/{run['id']}/stop")
    assert response.status_code == 202, response.text
    done = srv.wait_status(run["id"], TERMINAL, timeout=120)
    assert done["status"] == "stopped", done
    assert done["error"] == "stopped while parked"
    (outcome,) = events_of(srv, run["id"], "run.branch")  # the pod finished: nothing to push
    assert outcome["pushed"] is False and outcome["commits"] == 0
    deadline = time.monotonic() + 90
    while pod_status(world.node, world.namespace, run["id"]) != 404:
        assert time.monotonic() < deadline
        time.sleep(0.5)


class StallOnce:
    """A scenario: write ``before.txt``; the model's stream then stops mid-message (once);
    resumed, write ``after.txt``, commit both and finish."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, _arg: str | None) -> Sequence[anthropic_api.Turn]:
        with self._lock:
            self.calls += 1
            calls = self.calls
        turns = [
            anthropic_api.tool_use("Write", {"file_path": "before.txt", "content": "before\n"})
        ]
        if calls <= 2:  # the first process's requests: the second one stalls
            turns.append(
                anthropic_api.stall(anthropic_api.Text("I will"), anthropic_api.Text("x"), after=1)
            )
        turns += [
            anthropic_api.tool_use("Write", {"file_path": "after.txt", "content": "after\n"}),
            anthropic_api.tool_use(
                "Bash",
                {"command": "git add -A && git commit -q -m 'Both files'", "description": "c"},
            ),
            anthropic_api.text("Both files are written and committed."),
        ]
        return turns


def test_a_stalled_pod_run_is_resumed_in_its_pod(
    start_server: Callable[[], Server], world: AgentWorld
) -> None:
    marker = world.fake.register("k8s-stall-once", StallOnce())
    srv = start_server()
    spec = world.spec(f"{marker} write two files")
    spec["watchdog"] = {"model_stall_seconds": 2, "tool_quiet_seconds": 600, "stall_resumes": 1}
    with srv.client() as c:
        response = c.post("/api/runs", json={"spec": spec})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    done = srv.wait_status(run_id, TERMINAL, timeout=240)
    assert done["status"] == "succeeded", (done, stored_events(srv, run_id))
    assert done["continuation"]["stall_resumes"] == 1
    first, second = (d["session_id"] for d in events_of(srv, run_id, "agent.init"))
    assert first == second == done["session_id"]
    notices = [d["message"] for d in events_of(srv, run_id, "run.notice")]
    assert any(n.startswith("resumed the agent in its pod ") for n in notices), notices
    branch = f"agentfarm/{run_id}"
    assert world.branch_file(branch, "before.txt") == "before\n"
    assert world.branch_log(branch) == ["Both files", "init"]
