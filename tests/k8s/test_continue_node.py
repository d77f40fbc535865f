"""Continuing an ended Kubernetes run with a new prompt, through the API and the CLI, on a
real node (tier B): the real Claude Code CLI in a real pod against the scripted fake model.
The run ends, its pod pushes the branch and is deleted; continued, the run goes on in a new
pod on that branch, with the agent's session (carried out of the first pod at its end) put
back in HOME, so `claude --resume` continues the same conversation; the new commit is pushed
on top. A server whose pods do not wait after their agent keeps no session: a clear 409.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic_api as fake
from tests.integration.server import Server
from tests.k8s import cluster
from tests.k8s.agentimage import AgentWorld, agent_world
from tests.k8s.test_api_node import TERMINAL, launch, pod_status, stored_events


@pytest.fixture(scope="module")
def world(
    k8s_node: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentWorld]:
    work = tmp_path_factory.mktemp("k8s-continue-node")
    with agent_world(k8s_node, work, "continue-node-test") as w:
        yield w


@pytest.fixture
def start_server(world: AgentWorld, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(**env: str) -> Server:
        data = tmp_path / f"data{len(servers)}"
        srv = Server(data, world.server_env() | env, tmp_path / f"server{len(servers)}.log")
        servers.append(srv.start())
        return srv

    yield start
    for srv in servers:
        srv.stop()


def of_type(srv: Server, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in stored_events(srv, run_id) if e["type"] == kind]


def gone(world: AgentWorld, run_id: str) -> None:
    deadline = time.monotonic() + 90
    while pod_status(world.node, world.namespace, run_id) != 404:
        assert time.monotonic() < deadline
        time.sleep(0.5)


def two_files() -> list[fake.Turn]:
    commit = "git add -A && git commit -q -m"
    return [
        fake.tool_use("Write", {"file_path": "first.txt", "content": "one\n"}),
        fake.tool_use("Bash", {"command": f"{commit} first", "description": "c"}),
        fake.text("First done."),
        # The continued process: the fake finds the first prompt's marker in the conversation
        # the CLI resumed, so these turns come only if the session came back.
        fake.tool_use("Write", {"file_path": "second.txt", "content": "two\n"}),
        fake.tool_use("Bash", {"command": f"{commit} 'second file'", "description": "c"}),
        fake.text("Second done."),
    ]


def test_an_ended_pod_run_is_continued_in_a_new_pod_in_its_session_and_branch(
    start_server: Callable[..., Server], world: AgentWorld
) -> None:
    name = f"k8s-continue-{time.time_ns()}"
    marker = world.fake.register(name, two_files())
    srv = start_server()
    run = launch(srv, world, f"{marker} write the first file")
    first = srv.wait_status(run["id"], TERMINAL, timeout=180)
    assert first["status"] == "succeeded", (first, stored_events(srv, run["id"]))
    notices = [d["message"] for d in of_type(srv, run["id"], "run.notice")]
    assert any(n.startswith("kept the agent's session (1 file(s), ") for n in notices), notices
    gone(world, run["id"])  # its pod pushed, ended and was deleted (cleanup after 0 s)
    branch = f"agentfarm/{run['id']}"
    assert world.branch_log(branch) == ["first", "init"]

    started = time.monotonic()
    with srv.client() as c:
        response = c.post(f"/api/runs/{run['id']}/resume", json={"prompt": "now the second"})
    assert response.status_code == 202, response.text
    done = srv.wait_status(run["id"], TERMINAL, timeout=180)
    print(f"continue -> succeeded in a new pod in {time.monotonic() - started:.1f} s")
    assert done["status"] == "succeeded", (done, stored_events(srv, run["id"]))
    results = [d["result"] for d in of_type(srv, run["id"], "agent.result")]
    assert results == ["First done.", "Second done."]
    sessions = {d["session_id"] for d in of_type(srv, run["id"], "agent.init")}
    assert sessions == {first["session_id"]} == {done["session_id"]}
    statuses = [d["status"] for d in of_type(srv, run["id"], "run.status")]
    assert statuses == ["queued", "starting", "running", "succeeded",
                        "starting", "running", "succeeded"]  # fmt: skip
    notices = [d["message"] for d in of_type(srv, run["id"], "run.notice")]
    assert any(
        n.startswith("continued the run in a new pod ")
        and "on its branch, the agent's session put back (1 file(s))" in n
        for n in notices
    ), notices
    # The second pod cloned the branch and pushed its commit on top (a fast-forward).
    assert world.branch_log(branch) == ["second file", "first", "init"]
    assert world.branch_file(branch, "first.txt") == "one\n"
    assert world.branch_file(branch, "second.txt") == "two\n"
    outcomes = of_type(srv, run["id"], "run.branch")
    assert [(o["pushed"], o["commits"]) for o in outcomes] == [(True, 1), (True, 1)]
    # The model saw the earlier conversation: the resumed request carries the first prompt,
    # the first turns' tool calls and the new prompt.
    last = str(world.fake.requests_for(name)[-1].body)
    assert "write the first file" in last and "first.txt" in last and "now the second" in last
    assert done["cost_usd"] > first["cost_usd"]

    # And again, from the CLI: the session kept at the second end goes on.
    gone(world, run["id"])
    resumed = srv.cli("resume", run["id"], "anything else?")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    again = srv.wait_status(run["id"], TERMINAL, timeout=180)
    assert again["status"] == "succeeded", (again, stored_events(srv, run["id"]))
    assert of_type(srv, run["id"], "agent.init")[-1]["session_id"] == first["session_id"]
    assert of_type(srv, run["id"], "run.branch")[-1]["commits"] == 0  # nothing new to push


def test_a_pod_run_whose_session_was_not_kept_is_a_409_that_says_why(
    start_server: Callable[..., Server], world: AgentWorld
) -> None:
    marker = world.fake.register(f"k8s-no-wait-{time.time_ns()}", [fake.text("Done.")])
    srv = start_server(AGENTFARM_K8S_RESUME_WAIT_SECONDS="0")
    run = launch(srv, world, f"{marker} say done")
    assert srv.wait_status(run["id"], TERMINAL, timeout=180)["status"] == "succeeded"
    with srv.client() as c:
        response = c.post(f"/api/runs/{run['id']}/resume", json={"prompt": "and more"})
    assert response.status_code == 409, response.text
    message = response.json()["error"]["message"]
    assert message.startswith(f"run {run['id']} cannot be continued: ")
    assert "AGENTFARM_K8S_RESUME_WAIT_SECONDS is 0" in message
    assert "launch a new run on its branch instead" in message
