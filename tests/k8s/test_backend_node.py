"""The kubernetes backend on a real node (tier B): a real pod runs the real Claude Code CLI.

The agent image is assembled from this machine's files (python3, git, bash, the pinned Claude
Code and Codex CLIs and deploy/agent/entrypoint.py) with scripts/k8s-testenv/build-image.py.
The scripted fake model and a git daemon (clone and push over git://) listen on host loopback;
socat relays carry them into the node's network namespace at the node IP, which pods reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentfarm.backends.base import Record
from agentfarm.backends.kubernetes import backend as k8s_backend
from agentfarm.backends.kubernetes import manifests
from agentfarm.backends.local import binaries
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests import realparts
from tests.fakes import anthropic_api
from tests.k8s import cluster

REPO = Path(__file__).resolve().parents[2]
IMAGE = "agentfarm.local/agent:test"
TOOLS = ["bash", "env", "cat", "ls", "sed", "grep", "sleep", "mkdir", "rm", "head", "tail", "id"]


def claude_binary() -> Path:
    tools = Path(os.environ.get("AGENTFARM_TOOLS", REPO / ".tools"))
    path = (tools / "node_modules" / ".bin" / "claude").resolve()
    if not path.is_file():
        realparts.missing("Claude Code CLI", "run make claude")
    return path


def codex_binary() -> Path:
    """Codex's native binary (static), as deploy/agent/Dockerfile copies it: the ``codex`` npm
    puts on PATH is a Node launcher, and the image has no Node."""
    tools = Path(os.environ.get("AGENTFARM_TOOLS", REPO / ".tools"))
    path = Path(binaries.native(str((tools / "node_modules" / ".bin" / "codex").resolve())))
    if path.suffix == ".js" or not os.access(path, os.X_OK):
        realparts.missing("Codex CLI", "run `make codex` (scripts/install-codex.sh installs it)")
    return path


@dataclass
class Relay:
    """host loopback port -> unix socket -> node IP:port inside the node's network namespace."""

    procs: list[subprocess.Popen[bytes]]

    @classmethod
    def start(cls, node: cluster.Cluster, port: int, workdir: Path) -> Relay:
        sock = workdir / f"relay-{port}.sock"
        outer = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600", f"TCP:127.0.0.1:{port}"]
        )
        inner = subprocess.Popen(
            ["nsenter", "--target", str(node.ns_pid), "--net", "--", "socat",
             f"TCP-LISTEN:{port},bind={cluster.NODE_IP},reuseaddr,fork", f"UNIX-CONNECT:{sock}"]
        )  # fmt: skip
        return cls([outer, inner])

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)


@dataclass
class World:
    node: cluster.Cluster
    settings: Settings
    fake: anthropic_api.FakeAnthropic
    origin: Path
    git_port: int

    @property
    def repo_url(self) -> str:
        return f"git://{cluster.NODE_IP}:{self.git_port}/origin.git"

    def command(self, prompt: str) -> AgentCommand:
        message = {"type": "user", "message": {"role": "user", "content": prompt}}
        return AgentCommand(
            argv=["claude", "-p", "--output-format", "stream-json", "--verbose",
                  "--input-format", "stream-json", "--permission-mode", "bypassPermissions"],
            env={
                "ANTHROPIC_BASE_URL": f"http://{cluster.NODE_IP}:{self.fake.port}",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "CLAUDE_CODE_MAX_RETRIES": "0",
            },
            stdin=(json.dumps(message) + "\n").encode(),
            close_stdin_after=("result",),
        )  # fmt: skip

    def run(self, prompt: str) -> models.Run:
        spec = models.AgentSpec(
            repo=self.repo_url, base_branch="main", prompt=prompt, backend="kubernetes"
        )
        return models.Run(spec=spec)


def build_agent_image(out: Path) -> Path:
    """The agent image from local files (what deploy/agent/Dockerfile builds, minus Debian)."""
    passwd = out / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\nagent:x:1000:1000::/home/agent:/bin/bash\n")
    group = out / "group"
    group.write_text("root:x:0:\nagent:x:1000:\n")
    tarball = out / "agent.tar"
    argv = [sys.executable, str(REPO / "scripts/k8s-testenv/build-image.py"),
            "--tag", IMAGE, "--output", str(tarball),
            "--add-binary", "/usr/bin/python3.11", "--symlink", "/usr/bin/python3:python3.11",
            "--add", "/usr/lib/python3.11:/usr/lib/python3.11",
            "--add-binary", "/usr/bin/git", "--add", "/usr/lib/git-core:/usr/lib/git-core",
            "--add", f"{claude_binary()}:/usr/local/bin/claude",
            "--add", f"{codex_binary()}:/usr/local/bin/codex",
            "--add", f"{REPO / 'deploy/agent/entrypoint.py'}:{manifests.ENTRYPOINT}",
            "--add", f"{passwd}:/etc/passwd", "--add", f"{group}:/etc/group",
            "--symlink", "/bin/sh:bash",
            "--mkdir", "/tmp:1777", "--mkdir", "/workspace", "--mkdir", "/home/agent",
            "--mkdir", "/run/agentfarm", "--env", "HOME=/home/agent", "--resolve-libs",
            "--user", "1000:1000"]  # fmt: skip
    for tool in TOOLS:
        path = shutil.which(tool, path="/usr/bin:/bin")
        if path:
            argv += ["--add-binary", str(Path(path).resolve())]
            if Path(path).resolve() != Path("/usr/bin") / tool:
                argv += ["--symlink", f"/usr/bin/{tool}:{Path(path).resolve()}"]
    subprocess.run(argv, check=True, capture_output=True)
    return tarball


#: The nodes (by kubeconfig) the agent image went into in this session.
_IMPORTED: set[Path] = set()


def import_agent_image(node: cluster.Cluster, workdir: Path) -> float:
    """Build the agent image in ``workdir`` and import it into ``node``, once per node: every
    module here uses the same image, and with both CLIs (about 750 MiB) that takes 20-30 s.
    The seconds it took; 0 when the node had it already."""
    if node.kubeconfig in _IMPORTED:
        return 0.0
    started = time.monotonic()
    node.import_image(build_agent_image(workdir))
    _IMPORTED.add(node.kubeconfig)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def world(k8s_node: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("k8s-backend-node")
    image_seconds = import_agent_image(k8s_node, work)

    origin = work / "git" / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    seed = work / "seed"
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    (seed / "README.md").write_text("test repo\n")
    git = ["git", "-C", str(seed), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    subprocess.run([*git, "push", "-q", str(origin), "main"], check=True)
    subprocess.run(["chmod", "-R", "a+rwX", str(work / "git")], check=True)
    git_port = cluster.free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
         f"--base-path={work / 'git'}", "--listen=127.0.0.1", f"--port={git_port}",
         str(work / "git")]
    )  # fmt: skip
    fake = anthropic_api.FakeAnthropic().start()
    relays = [Relay.start(k8s_node, port, work) for port in (git_port, fake.port)]
    namespace = k8s_node.create_namespace("agents")
    settings = Settings(
        k8s_kubeconfig=k8s_node.kubeconfig,
        k8s_namespace=namespace,
        k8s_image=IMAGE,
        k8s_runtime_class=k8s_node.runtime_class,
        k8s_instance="node-test",
        k8s_cleanup_after_seconds=0,
        stop_grace_seconds=3,
    )
    print(f"agent image built and imported in {image_seconds:.1f} s (0: imported before)")
    try:
        yield World(k8s_node, settings, fake, origin, git_port)
    finally:
        for relay in relays:
            relay.stop()
        fake.stop()
        daemon.terminate()
        daemon.wait(timeout=10)


@pytest.fixture
async def backend(world: World) -> AsyncIterator[k8s_backend.KubernetesBackend]:
    b = k8s_backend.KubernetesBackend(world.settings)
    yield b
    await b.aclose()


async def collect(records: AsyncIterator[Record], timeout: float = 180) -> list[Record]:
    out: list[Record] = []
    async with asyncio.timeout(timeout):
        async for record in records:
            out.append(record)
            if record.kind == "exit":
                break
    return out


def stdout_types(records: list[Record]) -> list[str]:
    types = []
    for r in records:
        if r.kind == "stdout":
            try:
                types.append(json.loads(r.data).get("type"))
            except ValueError:
                types.append("?")
    return types


async def test_a_run_writes_commits_and_pushes_in_a_real_pod(
    world: World, backend: k8s_backend.KubernetesBackend
) -> None:
    run = world.run(anthropic_api.marker("write-and-commit"))
    started = time.monotonic()
    handle, _ = await backend.launch(
        run, LaunchSpec.of(run.id, world.command(run.prompt), {"ANTHROPIC_API_KEY": "fake"})
    )
    records = await collect(handle.records(after=0))
    elapsed = time.monotonic() - started
    assert any(r.kind == "stdout" for r in records), records
    first_stdout = next(r for r in records if r.kind == "stdout")
    print(f"launch -> exit {elapsed:.1f} s; {len(records)} records")
    exit_info = records[-1].exit
    assert exit_info is not None
    text = "\n".join(r.data.decode(errors="replace") for r in records)
    assert exit_info.exit_code == 0, text
    assert stdout_types(records)[0] == "system"
    assert "result" in stdout_types(records)
    assert json.loads(first_stdout.data)["cwd"] == "/workspace"
    # The pod waits after its agent (the run could be resumed in it) until finalize's finish:
    # then it pushes, and says so.
    notices = await handle.finalize()
    assert any(n.startswith("pushed 1 commit(s) to agentfarm/") for n in notices), notices
    assert handle.branch_outcome is not None and handle.branch_outcome.pushed
    shown = subprocess.run(
        ["git", "-C", str(world.origin), "show", f"agentfarm/{run.id}:hello.txt"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert shown == "Hello from agentfarm.\n"
    cursors = [r.cursor for r in records]
    assert cursors == sorted(set(cursors))
    await backend.cleanup(run)


async def test_a_failed_clone_in_the_pod_is_the_runs_error(
    world: World, backend: k8s_backend.KubernetesBackend
) -> None:
    """The agent container clones before the agent (no init container): a repository the
    forge does not serve ends the run with git's reason, and no agent ran."""
    spec = models.AgentSpec(
        repo=f"git://{cluster.NODE_IP}:{world.git_port}/missing.git", base_branch="main",
        prompt="x", backend="kubernetes",
    )  # fmt: skip
    run = models.Run(spec=spec)
    handle, _ = await backend.launch(
        run, LaunchSpec.of(run.id, world.command(run.prompt), {"ANTHROPIC_API_KEY": "fake"})
    )
    records = await collect(handle.records(after=0))
    exit_info = records[-1].exit
    assert exit_info is not None and exit_info.exit_code == 1, records
    assert exit_info.error is not None
    assert exit_info.error.startswith("cloning the repository failed: git clone:"), exit_info
    assert "missing.git" in exit_info.error
    assert not any(r.kind in ("stdout", "stderr") for r in records), records
    assert await handle.finalize() == []
    await backend.cleanup(run)


async def test_stop_deletes_the_running_pod(
    world: World, backend: k8s_backend.KubernetesBackend
) -> None:
    run = world.run(anthropic_api.marker("sleep"))
    handle, _ = await backend.launch(
        run, LaunchSpec.of(run.id, world.command(run.prompt), {"ANTHROPIC_API_KEY": "fake"})
    )
    records = handle.records(after=0)
    seen: list[Record] = []
    async with asyncio.timeout(120):
        async for record in records:
            seen.append(record)
            if record.kind == "stdout" and b'"tool_use"' in record.data:
                break  # the agent is inside `sleep 600`
    started = time.monotonic()
    await handle.stop(grace=3)
    rest = await collect(records, timeout=90)
    print(f"stop -> exit record {time.monotonic() - started:.1f} s")
    assert rest[-1].exit is not None
    assert rest[-1].exit.stopped
    # The stop ended the agent, not the pod (a stalled run goes on in it); the run's end
    # finishes the pod, and its Secret and pod go.
    await handle.finalize()
    name = manifests.object_name(run.id)
    ns = world.settings.k8s_namespace
    for _ in range(120):
        status, _ = await asyncio.to_thread(
            world.node.request, "GET", f"/api/v1/namespaces/{ns}/pods/{name}"
        )
        if status == 404:
            break
        await asyncio.sleep(0.5)
    assert status == 404
    await backend.cleanup(run)


async def test_restart_reattaches_and_resumes_the_log(world: World) -> None:
    scenario = world.fake.register(
        "slow-node",
        [anthropic_api.tool_use("Bash", {"command": "sleep 4", "description": "wait"}),
         anthropic_api.text("All done.")],
    )  # fmt: skip
    run = world.run(scenario)
    first = k8s_backend.KubernetesBackend(world.settings)
    try:
        handle, _ = await first.launch(
            run, LaunchSpec.of(run.id, world.command(scenario), {"ANTHROPIC_API_KEY": "f"})
        )
        before: list[Record] = []
        # aclosing: leaving the loop early must close the log stream before the client goes.
        async with asyncio.timeout(120), contextlib.aclosing(handle.records(after=0)) as records:
            async for record in records:
                before.append(record)
                if record.kind == "stdout" and b'"tool_use"' in record.data:
                    break
    finally:
        await first.aclose()  # the control plane dies mid-run
    second = k8s_backend.KubernetesBackend(world.settings)
    try:
        again, _ = await second.attach(run)
        after = await collect(again.records(after=before[-1].cursor))
        assert after[-1].exit is not None
        assert after[-1].exit.exit_code == 0
        replay = await collect(again.records(after=0))
        # Phase notices ("scheduled on node ...") come from watching the pod start; a replay
        # after the pod runs has nothing to say about that, and the supervisor stored them
        # already. Everything from the log must match exactly: nothing lost, nothing doubled.
        started = next(r.cursor for r in replay if r.kind == "started")
        got = [(r.cursor, r.kind, r.data) for r in before + after if r.cursor >= started]
        want = [(r.cursor, r.kind, r.data) for r in replay if r.cursor >= started]
        assert got == want
        assert [r.cursor for r in before + after] == sorted({r.cursor for r in before + after})
        await second.cleanup(run)
    finally:
        await second.aclose()


def shell(script: str) -> AgentCommand:
    """An "agent" that is a shell script (the image has bash and coreutils)."""
    return AgentCommand(argv=["bash", "-c", script], env={}, stdin=b"", close_stdin_after=())


async def test_a_run_cannot_write_the_shared_claude_home(
    world: World, backend: k8s_backend.KubernetesBackend, tmp_path: Path
) -> None:
    """Item 2b: with credentials `shared-home` the claim is mounted read-only, beside the pod's
    own ~/.claude, which gets the credentials file and nothing else."""
    shared = tmp_path / "claude-home"
    shared.mkdir()
    files = {".credentials.json": '{"claudeAiOauth": {"accessToken": "t"}}\n',
             "settings.json": '{"theme": "dark"}\n'}  # fmt: skip
    for name, text in files.items():
        (shared / name).write_text(text)
    subprocess.run(["chown", "-R", "1000:1000", str(shared)], check=True)
    ns = world.settings.k8s_namespace
    pv = f"claude-home-{ns}"
    world.node.ensure("/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "hostPath": {"path": str(shared), "type": "Directory"}},
    })  # fmt: skip
    world.node.ensure(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": world.settings.k8s_credentials_claim},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Mi"}}},
    })  # fmt: skip
    hook = '{"hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": "id"}]}]}}'
    script = (
        "ls -A ~/.claude | sed 's/^/home: /'\n"
        "grep -q accessToken ~/.claude/.credentials.json && echo 'credentials copied'\n"
        f"echo '{hook}' > $AGENTFARM_SHARED_CLAUDE/settings.json || echo 'refused: settings'\n"
        ": > $AGENTFARM_SHARED_CLAUDE/planted || echo 'refused: new file'\n"
        "rm -f $AGENTFARM_SHARED_CLAUDE/.credentials.json || echo 'refused: delete'\n"
    )
    spec = models.AgentSpec(
        repo=world.repo_url, base_branch="main", prompt="p", backend="kubernetes",
        kubernetes={"credentials": "shared-home"},
    )  # fmt: skip
    run = models.Run(spec=spec)
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, shell(script), {}))
    records = await collect(handle.records(after=0))
    out = [r.data.decode() for r in records if r.kind == "stdout"]
    assert records[-1].exit is not None and records[-1].exit.exit_code == 0, records
    assert out[:2] == ["home: .credentials.json", "credentials copied"], out
    assert {"refused: settings", "refused: new file", "refused: delete"} <= set(out), out
    assert sorted(p.name for p in shared.iterdir()) == sorted(files)
    for name, text in files.items():
        assert (shared / name).read_text() == text
    await backend.cleanup(run)


async def test_the_cursor_survives_the_kubelets_log_rotation(
    world: World, backend: k8s_backend.KubernetesBackend
) -> None:
    """Item 7a: the agent writes about 4 MiB in bursts of 1 MiB, 12 s apart, so the kubelet
    rotates its log (1 MiB, checked every 10 s; tests/k8s/node.py) under the backend's
    follow. Every line arrives once, in order; read again later (the kubelet serves only the
    newest file then), the lines keep their cursors and what rotation took is announced."""
    bursts, per_burst = 4, 1000
    script = (
        f"pad=$(printf '%01000d' 0)\n"
        f"for ((b = 0; b < {bursts}; b++)); do\n"
        # Before the first burst too: the backend must be following the log before the
        # kubelet first rotates it (a loaded machine takes seconds to get there), or the
        # first burst is announced as rotated away rather than read, which is another case.
        "  sleep 12\n"
        f"  for ((i = 1; i <= {per_burst}; i++)); do\n"
        f'    printf \'{{"type":"x","n":%d,"pad":"%s"}}\\n\' $((b * {per_burst} + i)) $pad\n'
        "  done\n"
        "done\n"
    )
    run = world.run("p")
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, shell(script), {}))
    live = await collect(handle.records(after=0), timeout=300)
    assert live[-1].exit is not None and live[-1].exit.exit_code == 0, live[-5:]
    cursors = [r.cursor for r in live]
    assert cursors == sorted(set(cursors))
    numbers = [json.loads(r.data)["n"] for r in live if r.kind == "stdout"]
    assert numbers == sorted(set(numbers))
    notices = [r.data.decode() for r in live if r.kind == "notice"]
    assert numbers == list(range(1, bursts * per_burst + 1)), (len(numbers), notices)

    # Read again, as after a restart: the kubelet serves only the newest file now.
    again, _ = await backend.attach(run)
    replay = await collect(again.records(after=0), timeout=120)
    first = next(r for r in replay if r.kind == "stdout")
    assert json.loads(first.data)["n"] > 1, "the log was not rotated: the test proves nothing"
    seen = {r.cursor: r.data for r in live if r.kind == "stdout"}
    again_seen = {r.cursor: r.data for r in replay if r.kind == "stdout"}
    assert again_seen and all(seen[c] == d for c, d in again_seen.items())  # same cursors
    assert any("rotated away" in r.data.decode() for r in replay if r.kind == "notice")
    resumed = await collect(again.records(after=live[-2].cursor), timeout=120)
    assert [r.kind for r in resumed] == ["exit"]
    await backend.cleanup(run)


@pytest.fixture
async def kit_backend(world: World) -> AsyncIterator[k8s_backend.KubernetesBackend]:
    """The backend with the kit's Role (deploy/k8s/base/rbac.yaml) and nothing else."""
    from tests.k8s.test_backend_api import kit_role_rules

    ns = world.settings.k8s_namespace
    access = await asyncio.to_thread(
        world.node.service_account_access, ns, kit_role_rules(), name="agentfarm-kit"
    )
    b = k8s_backend.KubernetesBackend(
        world.settings.model_copy(update={"k8s_kubeconfig": access.kubeconfig})
    )
    yield b
    await b.aclose()


async def test_follow_ups_and_an_interrupt_reach_the_agent_in_its_pod(
    world: World, kit_backend: k8s_backend.KubernetesBackend
) -> None:
    """Through the exec API into the pod (the entrypoint's control socket), with the kit's
    RBAC: a follow-up within the window starts a second turn in the same session; an interrupt
    ends a running tool's turn and the run goes on; refusals come back with their reason."""
    from agentfarm.agents import claude
    from agentfarm.domain import errors

    backend = kit_backend

    scenario = world.fake.register(
        "converse-node", [anthropic_api.text("First answer."), anthropic_api.text("Second.")]
    )
    run = world.run(f"{scenario} first question")
    base = world.command(run.prompt)
    command = dataclasses.replace(
        base,
        argv=[*base.argv, "--replay-user-messages"],
        interrupt=claude.ClaudeAdapter().interrupt(),
        followup=claude.FOLLOWUP,
        followup_window=600.0,
        replays=True,
    )
    handle, _ = await backend.launch(
        run, LaunchSpec.of(run.id, command, {"ANTHROPIC_API_KEY": "fake"})
    )
    seen: list[Record] = []
    records = handle.records(after=0)

    async def until(check: Callable[[Record], bool]) -> Record:
        async with asyncio.timeout(120):
            async for record in records:
                seen.append(record)
                assert record.kind != "exit", [r.data for r in seen]
                if check(record):
                    return record
        raise AssertionError(f"the log ended: {[r.data for r in seen]}")

    def waiting(record: Record) -> bool:
        return record.kind == "notice" and record.data.startswith(b"agentfarm.waiting ")

    def result(record: Record) -> bool:
        return record.kind == "stdout" and b'"type":"result"' in record.data

    await until(result)
    assert (await until(waiting)).data == b'agentfarm.waiting {"seconds": 600.0}'
    with pytest.raises(errors.BackendError, match="no turn is running"):
        await handle.interrupt()
    await handle.send(claude.FOLLOWUP.encode("a second question"))
    second = json.loads((await until(result)).data)
    assert second["result"] == "Second." and second["num_turns"] >= 1
    await until(waiting)
    # A new task that runs a long tool, then an interrupt of it: the run goes on.
    await handle.send(claude.FOLLOWUP.encode(f"{anthropic_api.marker('sleep')} now wait"))
    await until(lambda r: r.kind == "stdout" and b'"tool_use"' in r.data)
    await asyncio.sleep(1.0)  # not an assertion: lets the Bash tool start
    await handle.interrupt()
    interrupted = json.loads((await until(result)).data)
    assert interrupted["subtype"] == "error_during_execution"
    assert (await until(waiting)).data == b'agentfarm.waiting {"seconds": 600.0}'
    inits = [json.loads(r.data) for r in seen if r.kind == "stdout" and b'"init"' in r.data]
    assert len({i["session_id"] for i in inits}) == 1
    await handle.stop(grace=3)
    rest = await collect(records, timeout=90)
    assert rest[-1].exit is not None and rest[-1].exit.stopped
    with pytest.raises(errors.BackendError, match=r"cannot reach|not running|has exited"):
        await handle.send(claude.FOLLOWUP.encode("too late"))
    await backend.cleanup(run)
