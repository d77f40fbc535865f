"""The kubernetes backend through the API, on a real node (tier B): a real `agentfarm serve`
process launches real pods that run the real Claude Code CLI against the scripted fake model,
clone from and push to a git daemon (tests/k8s/agentimage.py sets that world up).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentfarm.backends.kubernetes import manifests
from tests.fakes import anthropic_api, git_http
from tests.integration.server import Server
from tests.k8s import cluster
from tests.k8s.agentimage import API_KEY, AgentWorld, agent_world
from tests.k8s.test_backend_node import Relay

TERMINAL = {"succeeded", "failed", "stopped", "lost"}


@pytest.fixture(scope="module")
def world(
    k8s_node: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentWorld]:
    with agent_world(k8s_node, tmp_path_factory.mktemp("k8s-api-node"), "api-node-test") as w:
        print(f"agent image built and imported in {w.image_seconds:.1f} s (0: imported before)")
        yield w


@pytest.fixture
def server(world: AgentWorld, tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", world.server_env(), tmp_path / "server.log")
    try:
        yield srv.start()
    finally:
        srv.stop()


def launch(srv: Server, world: AgentWorld, prompt: str) -> dict[str, Any]:
    with srv.client() as c:
        response = c.post("/api/runs", json={"spec": world.spec(prompt)})
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    assert run["status"] == "queued" and run["spec"]["backend"]["type"] == "kubernetes"
    return run


def stored_events(srv: Server, run_id: str) -> list[dict[str, Any]]:
    with srv.client() as c:
        response = c.get(f"/api/runs/{run_id}/events", params={"limit": 5000})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()
    return events


def wait_event(srv: Server, run_id: str, kind: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(e["type"] == kind for e in stored_events(srv, run_id)):
        if time.monotonic() > deadline:
            run = srv.wait_status(run_id, TERMINAL | {"queued", "starting", "running"})
            raise AssertionError(f"no {kind} event in {timeout} s: {run}")
        time.sleep(0.2)


def pod_status(node: cluster.Cluster, namespace: str, run_id: str) -> int:
    path = f"/api/v1/namespaces/{namespace}/pods/{manifests.object_name(run_id)}"
    status, _ = node.request("GET", path)
    return status


def check_log(events: list[dict[str, Any]]) -> list[str]:
    """Every event exactly once: contiguous seqs, one init, one result; returns the types."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["type"] for e in events]
    assert kinds.count("agent.init") == 1 and kinds.count("agent.result") == 1, kinds
    return kinds


def test_run_streams_its_events_live_and_pushes_its_branch(
    server: Server, world: AgentWorld
) -> None:
    run = launch(server, world, f"{anthropic_api.marker('write-and-commit')} add a hello file")
    run_id = run["id"]
    seen: list[dict[str, Any]] = []
    status_at_first_tool_call: str | None = None
    with server.client() as c:
        for event in server.iter_sse(run_id, timeout=180):
            seen.append(event)
            if event["type"] == "agent.tool_call" and status_at_first_tool_call is None:
                # Delivered live: the run is still going when its first tool call arrives.
                status_at_first_tool_call = c.get(f"/api/runs/{run_id}").json()["status"]
    done = server.wait_status(run_id, TERMINAL, timeout=10)
    assert done["status"] == "succeeded", (done, seen)
    assert status_at_first_tool_call == "running"

    kinds = check_log(seen)
    assert seen == stored_events(server, run_id)  # the stream is the stored log, in order
    assert kinds[0] == "run.status" and seen[0]["data"]["status"] == "queued"
    assert seen[-1]["type"] == "run.status" and seen[-1]["data"]["status"] == "succeeded"
    statuses = [e["data"]["status"] for e in seen if e["type"] == "run.status"]
    assert statuses == ["queued", "starting", "running", "succeeded"]
    assert kinds.index("agent.init") < kinds.index("agent.tool_call") < kinds.index("agent.result")
    calls = [e["data"]["name"] for e in seen if e["type"] == "agent.tool_call"]
    assert calls == ["Write", "Bash"]
    assert kinds.count("agent.tool_result") == 2
    assert seen[kinds.index("agent.init")]["data"]["cwd"] == manifests.WORKSPACE
    notices = [e["data"]["message"] for e in seen if e["type"] == "run.notice"]
    assert any(n.startswith(f"pushed 1 commit(s) to agentfarm/{run_id}") for n in notices)
    assert API_KEY not in json.dumps(seen)

    assert done["branch"] == f"agentfarm/{run_id}"
    assert done["num_turns"] >= 2 and done["cost_usd"] > 0
    assert world.branch_file(done["branch"], "hello.txt") == "Hello from agentfarm.\n"
    assert world.branch_log(done["branch"]) == ["Add hello.txt", "init"]


def test_stop_deletes_the_pod(server: Server, world: AgentWorld) -> None:
    run = launch(server, world, f"{anthropic_api.marker('sleep')} wait")
    run_id = run["id"]
    wait_event(server, run_id, "agent.tool_call")  # the agent is inside `sleep 600`
    assert pod_status(world.node, world.namespace, run_id) == 200
    with server.client() as c:
        response = c.post(f"/api/runs/{run_id}/stop")
    assert response.status_code == 202, response.text
    done = server.wait_status(run_id, TERMINAL, timeout=60)
    assert done["status"] == "stopped", done
    deadline = time.monotonic() + 90
    while (status := pod_status(world.node, world.namespace, run_id)) != 404:
        assert time.monotonic() < deadline, f"pod of {run_id} still there ({status})"
        time.sleep(0.5)
    kinds = [e["type"] for e in stored_events(server, run_id)]
    assert kinds.count("agent.init") == 1 and "agent.result" not in kinds


def test_server_kill9_midrun_then_restart(server: Server, world: AgentWorld) -> None:
    marker = world.fake.register(
        "k8s-slow-commit",
        [
            anthropic_api.tool_use(
                "Write", {"file_path": "slow.txt", "content": "slow\n"}, delay=1.0
            ),
            anthropic_api.tool_use(
                "Bash",
                {"command": "git add -A && git commit -qm 'slow work'", "description": "c"},
                delay=2.5,
            ),
            anthropic_api.text("committed", delay=1.5),
        ],
    )
    run = launch(server, world, f"{marker} go slowly")
    run_id = run["id"]
    wait_event(server, run_id, "agent.tool_call")
    server.kill()
    killed_at = datetime.now(UTC)
    time.sleep(1.0)
    server.start()
    done = server.wait_status(run_id, TERMINAL, timeout=120)
    assert done["status"] == "succeeded", done

    events = stored_events(server, run_id)
    kinds = check_log(events)
    calls = [e["data"]["id"] for e in events if e["type"] == "agent.tool_call"]
    assert len(calls) == len(set(calls)) == 2
    result = events[kinds.index("agent.result")]
    # The restarted server ingested the end of the run: the kill really was mid-run.
    assert datetime.fromisoformat(result["ts"]) > killed_at, (result, killed_at)
    statuses = [e["data"]["status"] for e in events if e["type"] == "run.status"]
    assert statuses == ["queued", "starting", "running", "succeeded"]
    assert world.branch_log(f"agentfarm/{run_id}") == ["slow work", "init"]


def test_a_run_pushes_to_a_remote_that_requires_the_stored_token(
    server: Server, world: AgentWorld
) -> None:
    """Item 6: `POST /api/runs` for a repository behind a token-checking git HTTP server (a
    real `git http-backend`, relayed into the node's network namespace at the node IP). The
    token is stored with the secrets API under the per-host name; the pod clones and pushes
    with it, and nothing else (events, the agent) sees it."""
    token = "forge-token-k8s-node-0123456789"
    forge = git_http.GitHttpServer(world.origin.parent, token=token).start()
    relay = Relay.start(world.node, forge.port, world.origin.parent.parent)
    try:
        name = f"GIT_TOKEN_{cluster.NODE_IP.replace('.', '_')}_{forge.port}"
        with server.client() as c:
            assert c.put(f"/api/secrets/{name}", json={"value": token}).status_code == 204
            spec = world.spec(f"{anthropic_api.marker('write-and-commit')} add a hello file")
            spec["repo"] = f"http://{cluster.NODE_IP}:{forge.port}/{world.origin.name}"
            response = c.post("/api/runs", json={"spec": spec})
            assert response.status_code == 201, response.text
            refused = c.post(
                "/api/runs",
                json={
                    "spec": spec | {"repo": spec["repo"].replace("http://", f"http://u:{token}@")}
                },
            )
            assert refused.status_code == 422 and "agentfarm secret set" in refused.text
        run_id = response.json()["id"]
        done = server.wait_status(run_id, TERMINAL, timeout=180)
        events = stored_events(server, run_id)
        assert done["status"] == "succeeded", (done, events)
        notices = [e["data"]["message"] for e in events if e["type"] == "run.notice"]
        assert any(n.startswith(f"pushed 1 commit(s) to agentfarm/{run_id}") for n in notices)
        assert world.branch_file(f"agentfarm/{run_id}", "hello.txt") == "Hello from agentfarm.\n"
        assert forge.passwords() == {token}  # every request carried it: clone and push
        pushes = [s for s in forge.seen if s.path.endswith("/git-receive-pack")]
        assert pushes and all(s.method == "POST" for s in pushes)
        assert token not in json.dumps(events)
    finally:
        relay.stop()
        forge.stop()


def test_follow_up_and_interrupt_through_the_api_reach_the_pod(
    server: Server, world: AgentWorld
) -> None:
    """The API, the CLI and a real pod: a reply within the follow-up window starts a new turn
    in the same session; an interrupt ends a running tool's turn and the run takes a message."""
    scenario = world.fake.register(
        "api-node-converse",
        [anthropic_api.text("First answer."), anthropic_api.text("Second answer.")],
    )
    spec = {**world.spec(f"{scenario} first question"), "followup_window_seconds": 600}
    with server.client() as c:
        response = c.post("/api/runs", json={"spec": spec})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    wait_event(server, run_id, "run.waiting")
    with server.client() as c:
        idle = c.post(f"/api/runs/{run_id}/interrupt")
        assert idle.status_code == 409 and "no turn is running" in idle.text
        sent = c.post(f"/api/runs/{run_id}/messages", json={"text": "a second question"})
        assert sent.status_code == 202, sent.text

    def count(kind: str) -> int:
        return [e["type"] for e in stored_events(server, run_id)].count(kind)

    deadline = time.monotonic() + 120
    while count("run.waiting") < 2:
        assert time.monotonic() < deadline, stored_events(server, run_id)
        time.sleep(0.2)
    # A new task with a long tool, and an interrupt of it: the run goes on waiting.
    sleeping = server.cli("send", run_id, f"{anthropic_api.marker('sleep')} now wait")
    assert sleeping.returncode == 0, sleeping.stderr
    while count("agent.tool_call") < 1:
        assert time.monotonic() < deadline, stored_events(server, run_id)
        time.sleep(0.2)
    time.sleep(1.0)  # not an assertion: lets the Bash tool start
    interrupted = server.cli("interrupt", run_id)
    assert interrupted.returncode == 0, interrupted.stdout + interrupted.stderr
    while count("run.waiting") < 3:
        assert time.monotonic() < deadline, stored_events(server, run_id)
        time.sleep(0.2)
    events = stored_events(server, run_id)
    results = [e["data"] for e in events if e["type"] == "agent.result"]
    assert [r["result"] for r in results[:2]] == ["First answer.", "Second answer."]
    assert results[2]["subtype"] == "error_during_execution"
    sessions = {e["data"]["session_id"] for e in events if e["type"] == "agent.init"}
    assert len(sessions) == 1
    with server.client() as c:
        assert c.get(f"/api/runs/{run_id}").json()["status"] == "running"
        c.post(f"/api/runs/{run_id}/stop")
    assert server.wait_status(run_id, TERMINAL, timeout=90)["status"] == "stopped"
