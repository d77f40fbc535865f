"""Pipeline-style runs and Codex runs on the kubernetes backend's real node (tier B), through
the supervisor as the server runs them.

A run on a forge's repository (the fake forge: git over smart HTTP, the token checked on every
request) works on a branch the pipeline names, clones and pushes with the token of its spec's
``git_token_secret``, reports where the branch ended up (``run.branch``), and a follow-up run
continues that branch. A Codex run (the real CLI, its per-turn driver run by the image's
python3) writes a file against the scripted fake Responses API, commits, and its branch is
pushed. The fake forge and the fake model APIs listen on host loopback; the relays of
tests/k8s/test_backend_node.py carry them to the node IP, which pods reach.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.agents.codex import CodexAdapter
from agentfarm.backends.kubernetes import backend as k8s_backend
from agentfarm.backends.kubernetes import manifests
from agentfarm.domain import gittokens, models
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor.runs import Supervisor
from tests.fakes import anthropic_api, forge_git, openai_api
from tests.fakes.forge import FakeForge
from tests.k8s import cluster
from tests.k8s.test_backend_node import IMAGE, Relay, import_agent_image
from tests.unit.forge_helpers import push_branch

REPO = "alice/proj"
TOKEN_SECRET = "FORGE_BOT"  # the name of the stored secret
ANTHROPIC_KEY = "sk-ant-forge-node-fake-0123456789"
CODEX_KEY = "sk-codex-forge-node-fake-0123456789"
#: A model the Codex CLI knows the tools of (tests/integration/test_codex_cli.py).
CODEX_MODEL = "gpt-5-codex"
GUARD = 300  # hang guard only


@dataclass
class World:
    node: cluster.Cluster
    forge: FakeForge
    anthropic: anthropic_api.FakeAnthropic
    openai: openai_api.FakeOpenAI
    namespace: str

    @property
    def repo_url(self) -> str:
        """The forge's repository as pods see it (the relay keeps the port)."""
        return f"http://{cluster.NODE_IP}:{self.forge.port}/{REPO}.git"

    def settings(self, data_dir: Path) -> Settings:
        values: dict[str, Any] = {
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": f"http://{cluster.NODE_IP}:{self.anthropic.port}",
            "CODEX_API_KEY": CODEX_KEY,
            "OPENAI_BASE_URL": f"http://{cluster.NODE_IP}:{self.openai.port}/v1",
        }
        return Settings(
            data_dir=data_dir,
            k8s_kubeconfig=self.node.kubeconfig,
            k8s_namespace=self.namespace,
            k8s_image=IMAGE,
            k8s_runtime_class=self.node.runtime_class,
            k8s_instance="forge-node-test",
            # The pods stay (until the module ends) so that a test can read their spec.
            k8s_cleanup_after_seconds=3600,
            stop_grace_seconds=3,
            **values,
        )

    async def pod(self, run_id: str) -> dict[str, Any]:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{manifests.object_name(run_id)}"
        status, body = await asyncio.to_thread(self.node.request, "GET", path)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def secret_status(self, run_id: str) -> int:
        path = f"/api/v1/namespaces/{self.namespace}/secrets/{manifests.object_name(run_id)}"
        status, _ = await asyncio.to_thread(self.node.request, "GET", path)
        return status


@pytest.fixture(scope="module")
def world(k8s_node: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("k8s-forge-node")
    seconds = import_agent_image(k8s_node, work)
    print(f"agent image built and imported in {seconds:.1f} s (0: imported before)")
    with contextlib.ExitStack() as stack:
        forge = stack.enter_context(FakeForge(work / "forge", kind="forgejo"))
        forge.create_repo(REPO)
        anthropic = anthropic_api.FakeAnthropic().start()
        stack.callback(anthropic.stop)
        openai = openai_api.FakeOpenAI().start()
        stack.callback(openai.stop)
        for port in (forge.port, anthropic.port, openai.port):
            relay = Relay.start(k8s_node, port, work)
            stack.callback(relay.stop)
        namespace = k8s_node.create_namespace("forge")
        stack.callback(
            k8s_node.kubectl, "delete", "namespace", namespace, "--wait=false", check=False
        )
        stack.callback(
            k8s_node.kubectl, "-n", namespace, "delete", "pods", "--all", "--grace-period=0",
            "--force", "--wait=false", check=False,
        )  # fmt: skip
        yield World(k8s_node, forge, anthropic, openai, namespace)


@dataclass
class Farm:
    world: World
    store: Store
    sup: Supervisor

    async def submit(
        self, prompt: str, *, agent: str = "claude", branch: str | None = None,
        base: str = "main",
    ) -> models.Run:  # fmt: skip
        spec = models.AgentSpec(
            agent=agent,
            repo=self.world.repo_url,
            base_branch=base,
            prompt=prompt,
            backend={"type": "kubernetes"},
            model=CODEX_MODEL if agent == "codex" else None,
            env={"CLAUDE_CODE_MAX_RETRIES": "0", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
            if agent == "claude"
            else {},
            git_token_secret=TOKEN_SECRET,
        )
        return await self.sup.submit(spec, branch=branch, origin="pipeline")

    async def ended(self, run_id: str) -> models.Run:
        async with asyncio.timeout(GUARD):
            while not (run := await self.store.get_run(run_id)).status.terminal:
                await asyncio.sleep(0.2)
        return run

    async def events(self, run_id: str) -> list[models.Event]:
        return await self.store.list_events(run_id, limit=5000)

    async def branch_event(self, run_id: str) -> dict[str, Any]:
        found = [e.data for e in await self.events(run_id) if e.type == models.EventType.run_branch]
        assert len(found) == 1, [(e.type, e.data) for e in await self.events(run_id)]
        return found[0]

    async def records_text(self, run_id: str) -> str:
        """Everything the control plane keeps of the run: its row and every event."""
        run = (await self.store.get_run(run_id)).model_dump(mode="json")
        events = [e.model_dump(mode="json") for e in await self.events(run_id)]
        return json.dumps({"run": run, "events": events})


@pytest.fixture
async def farm(world: World, tmp_path: Path) -> AsyncIterator[Farm]:
    settings = world.settings(tmp_path / "data")
    settings.ensure_dirs()
    SecretStore(settings.secrets_path).set(TOKEN_SECRET, world.forge.token)
    store = await Store.open(settings.data_dir / "agentfarm.db")
    backend = k8s_backend.KubernetesBackend(settings)
    adapters = {"claude": ClaudeAdapter(), "codex": CodexAdapter()}
    sup = Supervisor(
        settings, store, SecretStore(settings.secrets_path), {"kubernetes": backend}, adapters
    )
    await sup.start()
    try:
        yield Farm(world, store, sup)
    finally:
        await sup.close()
        await backend.aclose()
        await store.close()


def basic(user: str, token: str) -> str:
    return base64.b64encode(f"{user}:{token}".encode()).decode()


def secret_forms(forge: FakeForge) -> tuple[str, ...]:
    return (forge.token, basic("oauth2", forge.token))


def assert_token_only_by_reference(pod: dict[str, Any], forge: FakeForge, token_env: str) -> None:
    """The token is in no value, command or argument of the pod's spec: its one container
    (which clones and pushes) refers to the run's Secret by key."""
    spec = pod["spec"]
    text = json.dumps(spec)
    for value in secret_forms(forge):
        assert value not in text
    name = manifests.object_name(pod["metadata"]["labels"][manifests.LABEL_RUN])
    assert "initContainers" not in spec
    for container in spec["containers"]:
        (entry,) = [e for e in container["env"] if e["name"] == token_env]
        assert entry == {
            "name": token_env,
            "valueFrom": {"secretKeyRef": {"name": name, "key": token_env}},
        }, container["name"]


def branch_file(forge: FakeForge, branch: str, path: str) -> str:
    bare = forge.repos[REPO].bare
    return forge_git.git("show", f"{branch}:{path}", cwd=bare, home=forge.root) + "\n"


def git_requests(forge: FakeForge, since: int) -> list[Any]:
    return [r for r in forge.requests[since:] if ".git/" in r.path]


async def test_a_pipeline_run_pushes_its_named_branch_and_a_follow_up_continues_it(
    farm: Farm, world: World
) -> None:
    forge = world.forge
    branch = "agentfarm/issue-7-add-a-greeting"
    main = forge.branch_sha(REPO, "refs/heads/main")
    since = len(forge.requests)
    started = time.monotonic()
    run = await farm.submit(f"{anthropic_api.marker('write-and-commit')} add a hello file",
                            branch=branch)  # fmt: skip
    done = await farm.ended(run.id)
    print(f"pipeline run: submit -> {done.status.value} {time.monotonic() - started:.1f} s")
    assert done.status is models.RunStatus.succeeded, (done.error, await farm.records_text(run.id))
    assert done.branch == branch
    head = forge.branch_sha(REPO, f"refs/heads/{branch}")
    assert await farm.branch_event(run.id) == {
        "branch": branch, "start": main, "head": head, "commits": 1, "pushed": True,
        "error": None,
    }  # fmt: skip
    assert forge.branch_sha(REPO, f"refs/heads/{branch}~1") == main
    # Every git request (the clone before the agent, the push at the end) carried the
    # token, as the forge checks it.
    requests = git_requests(forge, since)
    assert requests and all(r.auth == "Basic" and r.authorized for r in requests), requests
    assert any("git-upload-pack" in r.path for r in requests)
    assert any("git-receive-pack" in r.path for r in requests)

    token = gittokens.explicit_token(world.repo_url)
    assert token is not None
    assert_token_only_by_reference(await world.pod(run.id), forge, token.name)
    assert await world.secret_status(run.id) == 404  # gone with the run
    records = await farm.records_text(run.id)
    for value in (*secret_forms(forge), ANTHROPIC_KEY):
        assert value not in records

    # A follow-up (base_branch == branch) clones the branch and puts its commit on top. Its
    # agent shows its environment first: what it could see of the token would be recorded.
    followup = world.anthropic.register(
        "forge-node-followup",
        [anthropic_api.tool_use("Bash", {"command": "env", "description": "Show the env"}),
         anthropic_api.tool_use("Bash", {
            "command": "printf 'And again.\\n' >> hello.txt && git commit -qam 'Extend hello.txt'",
            "description": "Extend the file and commit"}),
         anthropic_api.text("Extended hello.txt and committed it.")],
    )  # fmt: skip
    since = len(forge.requests)
    started = time.monotonic()
    follow = await farm.submit(f"{followup} say it again", branch=branch, base=branch)
    done = await farm.ended(follow.id)
    print(f"follow-up run: submit -> {done.status.value} {time.monotonic() - started:.1f} s")
    assert done.status is models.RunStatus.succeeded, (
        done.error,
        await farm.records_text(follow.id),
    )
    after = forge.branch_sha(REPO, f"refs/heads/{branch}")
    assert await farm.branch_event(follow.id) == {
        "branch": branch, "start": head, "head": after, "commits": 1, "pushed": True,
        "error": None,
    }  # fmt: skip
    assert after != head
    assert forge.branch_sha(REPO, f"refs/heads/{branch}~1") == head
    assert branch_file(forge, branch, "hello.txt") == "Hello from agentfarm.\nAnd again.\n"
    requests = git_requests(forge, since)
    assert requests and all(r.auth == "Basic" and r.authorized for r in requests), requests
    assert_token_only_by_reference(await world.pod(follow.id), forge, token.name)
    results = [
        e.data["content"]
        for e in await farm.events(follow.id)
        if e.type == models.EventType.agent_tool_result
    ]
    env = results[0]
    assert f"AGENTFARM_BRANCH={branch}" in env, results
    # (Its git config in the environment is safe.directory only, no Authorization header.)
    for name in (token.name, "AGENTFARM_GIT_CREDENTIALS", "extraHeader", "Authorization"):
        assert name not in env, env
    records = await farm.records_text(follow.id)
    for value in (*secret_forms(forge), ANTHROPIC_KEY):
        assert value not in records


async def test_a_codex_run_in_a_pod_commits_and_its_branch_is_pushed(
    farm: Farm, world: World
) -> None:
    forge = world.forge
    since = len(forge.requests)
    started = time.monotonic()
    run = await farm.submit(f"{openai_api.marker('write-and-commit')} add a hello file",
                            agent="codex")  # fmt: skip
    done = await farm.ended(run.id)
    print(f"codex run: submit -> {done.status.value} {time.monotonic() - started:.1f} s")
    assert done.status is models.RunStatus.succeeded, (done.error, await farm.records_text(run.id))
    branch = f"agentfarm/{run.id}"
    assert done.branch == branch
    outcome = await farm.branch_event(run.id)
    assert outcome["pushed"] is True and outcome["commits"] == 1, outcome
    assert forge.branch_sha(REPO, f"refs/heads/{branch}") == outcome["head"]
    assert any("git-receive-pack" in r.path for r in git_requests(forge, since))

    events = await farm.events(run.id)
    calls = [
        e.data["input"]["command"] for e in events if e.type == models.EventType.agent_tool_call
    ]
    assert len(calls) == 2 and "hello.txt" in calls[0], calls
    (result,) = [e.data for e in events if e.type == models.EventType.agent_result]
    assert result["result"].startswith("I wrote hello.txt"), result
    # The model was asked from the pod, through the provider the command defines.
    assert world.openai.requests_for("write-and-commit")
    pod = await world.pod(run.id)
    agent = pod["spec"]["containers"][0]
    assert agent["command"][:4] == ["python3", manifests.ENTRYPOINT, "run", "--"]
    assert agent["command"][4] == "python3" and "codex" in agent["command"]
    records = await farm.records_text(run.id)
    for value in (*secret_forms(forge), CODEX_KEY):
        assert value not in records
        assert value not in json.dumps(pod["spec"])


async def test_a_run_without_commits_pushes_nothing_and_says_so(farm: Farm, world: World) -> None:
    forge = world.forge
    branch = "agentfarm/issue-8-nothing-to-do"
    main = forge.branch_sha(REPO, "refs/heads/main")
    since = len(forge.requests)
    run = await farm.submit(f"{anthropic_api.marker('hello')} anything?", branch=branch)
    done = await farm.ended(run.id)
    assert done.status is models.RunStatus.succeeded, (done.error, await farm.records_text(run.id))
    assert await farm.branch_event(run.id) == {
        "branch": branch, "start": main, "head": main, "commits": 0, "pushed": False,
        "error": None,
    }  # fmt: skip
    assert forge.branch_sha(REPO, f"refs/heads/{branch}") is None
    assert not any("git-receive-pack" in r.path for r in git_requests(forge, since))


async def test_a_push_rejected_as_not_fast_forward_says_gits_reason(
    farm: Farm, world: World, tmp_path: Path
) -> None:
    forge = world.forge
    branch = "agentfarm/issue-9-taken"
    # Someone else's work is on the branch already: the run's push must not replace it.
    theirs = push_branch(forge, tmp_path, branch, "theirs\n")
    run = await farm.submit(f"{anthropic_api.marker('write-and-commit')} add it", branch=branch)
    done = await farm.ended(run.id)
    assert done.status is models.RunStatus.succeeded, (done.error, await farm.records_text(run.id))
    outcome = await farm.branch_event(run.id)
    assert outcome["pushed"] is False and outcome["commits"] == 1, outcome
    # The push comes from a fresh repository holding only the run's commits: git cannot tell
    # "non-fast-forward" there, and says "fetch first" (the remote has work it lacks).
    assert "[rejected]" in outcome["error"] and "(fetch first)" in outcome["error"], outcome
    assert "hint:" not in outcome["error"]  # git's reason, not its advice
    assert forge.branch_sha(REPO, f"refs/heads/{branch}") == theirs


async def test_a_token_the_forge_refuses_fails_the_clone_saying_so(
    farm: Farm, world: World
) -> None:
    stale = "stale-token-0123456789abcdef"
    SecretStore(farm.sup.settings.secrets_path).set(TOKEN_SECRET, stale)
    branch = "agentfarm/issue-13-stale"
    run = await farm.submit(f"{anthropic_api.marker('write-and-commit')} add it", branch=branch)
    done = await farm.ended(run.id)
    assert done.status is models.RunStatus.failed, done
    assert done.error is not None
    assert done.error.startswith(
        "cloning the repository failed: git clone: the server refused the run's git token"
    ), done.error
    assert "git_token_secret" in done.error and "agentfarm secret set" in done.error, done.error
    for value in (stale, basic("oauth2", stale)):
        assert value not in await farm.records_text(run.id)
        assert value not in json.dumps((await world.pod(run.id))["spec"])
    assert world.forge.branch_sha(REPO, f"refs/heads/{branch}") is None
