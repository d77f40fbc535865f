"""The Kubernetes API server restarted in the middle of runs (tier A, a cluster of its own).

A stand-in kubelet (tests/k8s/kubeletsim.py) serves the agents' logs through the API server's
``pods/log`` proxy and the test writes the pods' states. The kube-apiserver process is stopped
and started again on the same port and etcd while one run streams its log, one waits to be
scheduled and one has just started: the backend's shared pod watch and the log streams must
reconnect, and every run must end right with each of its lines once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfarm.backends.base import Record
from agentfarm.backends.kubernetes import backend as k8s_backend
from agentfarm.backends.kubernetes import manifests
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests import realparts
from tests.k8s import cluster, conftest, kubeletsim
from tests.k8s.test_backend_api import kit_role_rules

COMMAND = AgentCommand(argv=["claude", "-p"], env={}, stdin=b"{}\n")


@pytest.fixture
def own_api(tmp_path: Path) -> Iterator[cluster.Cluster]:
    """A tier A of this test's own: restarting the session's would disturb other tests."""
    if missing := cluster.missing_binaries():
        realparts.missing(conftest.PART, f"{conftest.HOW}; missing: {', '.join(missing)}")
    target = cluster.start_api(tmp_path / "api")
    try:
        yield target
    finally:
        problems = cluster.stop(target)
        assert not problems, problems


def new_run() -> models.Run:
    spec = models.AgentSpec(
        repo="https://github.com/example/repo.git", backend="kubernetes", prompt="hi"
    )
    return models.Run(spec=spec, config_name="restart")


def line(seq: int) -> bytes:
    return kubeletsim.entrypoint_line(seq, json.dumps({"type": "assistant", "n": seq}).encode())


async def test_an_api_server_restart_mid_run_loses_and_doubles_nothing(
    own_api: cluster.Cluster,
) -> None:
    target = own_api
    namespace = target.create_namespace("restart")
    access = await asyncio.to_thread(
        target.service_account_access, namespace, kit_role_rules(), name="agentfarm"
    )
    settings = Settings(
        k8s_kubeconfig=access.kubeconfig, k8s_namespace=namespace,
        k8s_image="agentfarm.local/agent:1", k8s_instance="restart",
        k8s_cleanup_after_seconds=0, k8s_resume_wait_seconds=0,
    )  # fmt: skip
    kubelet = kubeletsim.FakeKubelet(target)
    await kubelet.start()
    backend = k8s_backend.KubernetesBackend(settings)
    streaming, pending, starting = new_run(), new_run(), new_run()
    names = {r.id: manifests.object_name(r.id) for r in (streaming, pending, starting)}
    got: dict[str, list[Record]] = {}
    try:
        async with kubeletsim.Driver(target, namespace) as driver:

            async def follow(run: models.Run) -> None:
                handle, _ = await backend.launch(run, LaunchSpec.of(run.id, COMMAND, {}))
                got[run.id] = []
                async for record in handle.records(after=0):
                    got[run.id].append(record)
                    if record.kind == "exit":
                        return

            followers = [asyncio.create_task(follow(r)) for r in (streaming, pending, starting)]
            while len(got) < 3:
                await asyncio.sleep(0.05)
            log = kubelet.log(namespace, names[streaming.id])
            for name in (names[streaming.id], names[starting.id]):
                await driver.bind(name)
                await driver.running(name)
            for seq in range(1, 6):
                log.write(line(seq))

            async def seen(run: models.Run, kind: str, count: int = 1) -> None:
                async with asyncio.timeout(30):
                    while sum(r.kind == kind for r in got[run.id]) < count:
                        await asyncio.sleep(0.05)

            await seen(streaming, "stdout", 5)
            await seen(starting, "started")
            watch = backend.pods(namespace)
            watches_before = watch.watches

            # Down: the agent writes on (the kubelet keeps its log), nothing reaches the API.
            down = asyncio.create_task(asyncio.to_thread(kubeletsim.restart_apiserver, target, 3))
            await asyncio.sleep(1.5)
            for seq in range(6, 11):
                log.write(line(seq))
            kubelet.log(namespace, names[starting.id]).write(line(1))
            outage = await down
            began = time.monotonic()

            # Up again: states written now must reach the backend through the renewed watch.
            await driver.bind(names[pending.id])
            await driver.running(names[pending.id])
            kubelet.log(namespace, names[pending.id]).write(line(1))
            kubelet.log(namespace, names[pending.id]).end()
            await driver.succeeded(names[pending.id])
            for seq in range(11, 16):
                log.write(line(seq))
            log.end()
            await driver.succeeded(names[streaming.id], code=0)
            kubelet.log(namespace, names[starting.id]).end()
            await driver.succeeded(names[starting.id], code=3)
            async with asyncio.timeout(60):
                await asyncio.gather(*followers)
            recovered = time.monotonic() - began
    finally:
        await backend.aclose()
        await kubelet.aclose()

    def body(run: models.Run) -> list[int]:
        return [r.cursor >> 8 for r in got[run.id] if r.kind == "stdout"]

    assert body(streaming) == list(range(1, 16)), got[streaming.id]
    assert body(pending) == [1] and body(starting) == [1]
    for run, code in ((streaming, 0), (pending, 0), (starting, 3)):
        records = got[run.id]
        assert [r.kind for r in records].count("started") == 1
        exit_info = records[-1].exit
        assert exit_info is not None and exit_info.exit_code == code and not exit_info.lost
        assert not [r for r in records if r.kind == "notice" and b"rotated" in r.data]
        cursors = [r.cursor for r in records]
        assert cursors == sorted(set(cursors))
    # The one watch reconnected (no watch per pod), and the broken follow was reopened from
    # shortly before its last line, not from the start.
    assert watch.watches > watches_before
    reopened = [since for ns, pod, follow, since in kubelet.requests
                if pod == names[streaming.id] and follow and since is not None]  # fmt: skip
    assert reopened, kubelet.requests
    print(f"API server down {outage:.1f} s; all runs ended {recovered:.1f} s after it was back")
