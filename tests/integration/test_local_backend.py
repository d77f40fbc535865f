"""The local backend against real bubblewrap, real git and real cgroups (as root here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentfarm.backends.base import Record
from agentfarm.backends.local import backend as local_backend
from agentfarm.backends.local import cgroups, sandbox
from agentfarm.backends.local import git as local_git
from agentfarm.backends.local import handle as local_handle
from agentfarm.backends.local.backend import LocalBackend
from agentfarm.domain import backend_config, errors, models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests import realparts

pytestmark = pytest.mark.integration

SECRET = "sk-test-very-secret-value-0123456789"
ROOT = os.geteuid() == 0


@pytest.fixture(autouse=True)
def _need_bwrap() -> None:
    if shutil.which("bwrap") is None:
        realparts.missing("bubblewrap", "apt-get install bubblewrap (make test does it)")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    repo = tmp_path / "src"
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README").write_text("hello\n")
    subprocess.run(["git", "-C", str(repo), "add", "README"], check=True)
    subprocess.run(["git", "-C", str(repo), *ident, "commit", "-q", "-m", "init"], check=True)
    return repo


def agent(tmp_path: Path, name: str, body: str) -> str:
    """A fake agent program: a Python script run by the system interpreter."""
    directory = tmp_path / "agents"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/usr/bin/python3\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def new_run(source: Path, **sandbox: object) -> models.Run:
    box = backend_config.SandboxSpec(**sandbox)  # type: ignore[arg-type]
    spec = models.AgentSpec(repo=str(source), backend=backend_config.LocalSpec(sandbox=box))
    return models.Run(spec=spec)


async def collect(records: AsyncIterator[Record], timeout: float = 30) -> list[Record]:
    async def go() -> list[Record]:
        return [r async for r in records]

    return await asyncio.wait_for(go(), timeout)


def stdout_lines(records: list[Record]) -> list[bytes]:
    return [r.data for r in records if r.kind == "stdout"]


COMMITTER = """
import json, subprocess, sys
print(json.dumps({"type": "system", "subtype": "init"}), flush=True)
line = sys.stdin.readline().strip()
print(json.dumps({"type": "echo", "got": line}), flush=True)
open("made-by-agent.txt", "w").write("hi\\n")
subprocess.run(["git", "add", "made-by-agent.txt"], check=True)
subprocess.run(["git", "commit", "-q", "-m", "agent was here"], check=True)
print("to stderr", file=sys.stderr, flush=True)
print(json.dumps({"type": "result", "subtype": "success"}), flush=True)
sys.stdin.read()  # returns once the monitor closes stdin after the result line
print("stdin closed", flush=True)
"""


async def test_run_commits_and_branch_comes_home(
    tmp_path: Path, settings: Settings, source: Path
) -> None:
    backend = LocalBackend(settings)
    run = new_run(source)
    command = AgentCommand(
        argv=[agent(tmp_path, "committer", COMMITTER)], env={"FOO": "bar"},
        stdin=b"first message\n", close_stdin_after=("result",),
    )  # fmt: skip
    started = time.monotonic()
    handle, info = await backend.launch(
        run, LaunchSpec.of(run.id, command, {"ANTHROPIC_API_KEY": SECRET})
    )
    launch_seconds = time.monotonic() - started
    assert info.branch == f"agentfarm/{run.id}"
    records = await collect(handle.records(0))
    kinds = [r.kind for r in records]
    assert kinds[0] in ("started", "notice")
    assert kinds[-1] == "exit"
    assert [json.loads(x)["type"] for x in stdout_lines(records)[:3]] == [
        "system",
        "echo",
        "result",
    ]
    assert json.loads(stdout_lines(records)[1])["got"] == "first message"
    assert stdout_lines(records)[-1] == b"stdin closed"
    assert b"to stderr" in [r.data for r in records if r.kind == "stderr"]
    last = records[-1].exit
    assert last is not None
    assert last.exit_code == 0
    assert not last.stopped
    cursors = [r.cursor for r in records]
    assert cursors == sorted(cursors)
    assert len(set(cursors)) == len(cursors)
    middle = records[len(records) // 2].cursor
    assert await collect(handle.records(middle)) == records[len(records) // 2 + 1 :]

    assert await handle.finalize() == []
    log = subprocess.run(
        ["git", "-C", str(source), "log", "--format=%s", f"agentfarm/{run.id}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert log.splitlines()[0] == "agent was here"

    # The secret reached the agent only through the pipe and its environment.
    run_dir = settings.runs_dir / run.id
    for name in ("monitor.json", "spool", "git-state.json"):
        assert SECRET.encode() not in (run_dir / name).read_bytes()
    assert SECRET not in (run_dir / "workspace" / ".git" / "config").read_text()
    assert SECRET not in (source / ".git" / "config").read_text()
    print(f"launch took {launch_seconds * 1000:.0f} ms")
    await backend.cleanup(run)
    assert not run_dir.exists()


ISOLATION = """
import json, os, subprocess, sys
results = {}
def readable(path):
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        return True
    except OSError:
        return False
for name in sys.argv[1:]:
    results[name] = readable(name) or os.path.exists(name)
results["uid"] = os.getuid()
status = open("/proc/self/status").read()
results["CapEff"] = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff")][0]
# Real, effective, saved and filesystem ids, and the supplementary groups.
results["ids"] = {l.split(":")[0]: l.split()[1:] for l in status.splitlines()
                  if l.startswith(("Uid:", "Gid:"))}
results["groups"] = os.getgroups()
results["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
results["net"] = sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else None
results["ifaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:])
results["etc"] = sorted(os.listdir("/etc"))
results["home"] = os.environ["HOME"]
results["home_writable"] = os.access(os.environ["HOME"], os.W_OK)
results["secret_env"] = os.environ.get("ANTHROPIC_API_KEY") is not None
link = "/etc/localtime"
results["localtime"] = os.readlink(link) if os.path.islink(link) else None
results["localtime_readable"] = readable(link)
print(json.dumps(results), flush=True)
"""


async def test_isolation(tmp_path: Path, settings: Settings, source: Path) -> None:
    backend = LocalBackend(settings)
    settings.ensure_dirs()
    secrets_file = settings.data_dir / "secrets.json"
    secrets_file.write_text('{"token": "x"}')
    secrets_file.chmod(0o644)  # even world-readable, it is not in the sandbox

    # Another run's workspace, still there.
    other = new_run(source)
    sleeper = AgentCommand(argv=["/bin/sleep", "30"], env={})
    other_handle, other_info = await backend.launch(other, LaunchSpec.of(other.id, sleeper, {}))
    assert other_info.workspace is not None
    forbidden = [
        other_info.workspace, f"{other_info.workspace}/README", str(secrets_file),
        str(settings.data_dir), "/root", "/etc/shadow", str(source / "README"),
    ]  # fmt: skip

    run = new_run(source, network=False)
    program = agent(tmp_path, "isolation", ISOLATION)
    handle, _ = await backend.launch(
        run,
        LaunchSpec.of(
            run.id, AgentCommand(argv=[program, *forbidden], env={}), {"ANTHROPIC_API_KEY": SECRET}
        ),
    )
    records = await collect(handle.records(0))
    result = json.loads(stdout_lines(records)[0])
    for path in forbidden:
        assert result[path] is False, path
    assert result["uid"] != 0
    if ROOT:  # the launcher dropped every id, and the groups, before it ran bubblewrap
        assert result["ids"]["Uid"] == [str(settings.sandbox_uid)] * 4
        assert result["ids"]["Gid"] == [str(settings.sandbox_gid)] * 4
        assert result["groups"] == []
    assert int(result["CapEff"], 16) == 0
    assert len(result["pids"]) <= 3, result["pids"]  # bwrap's init, the agent (and nothing else)
    assert result["ifaces"] == ["lo"]
    assert "shadow" not in result["etc"]
    assert "passwd" in result["etc"]
    assert result["home"] == "/home/agent"
    assert result["home_writable"]
    assert result["secret_env"]
    # The host's zone link into /usr stays a link (a runtime reads the zone's name from it).
    _names, links = sandbox.etc_entries()
    host_zone = dict(links).get("localtime")
    assert result["localtime"] == host_zone
    assert result["localtime_readable"] == os.path.exists("/etc/localtime")
    await other_handle.stop(0.5)
    await collect(other_handle.records(0))
    await backend.cleanup(other)
    await backend.cleanup(run)


def leftover_processes(run_dir: Path, uid: int | None) -> list[int]:
    """Processes of this run still alive: those working in its directory, and those of the
    sandbox uid that are in this run's cgroup (or in no agentfarm cgroup at all). Other runs'
    sandboxes on the same machine, in their own cgroups, are not this test's business."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue  # finished; this VM's init is slow to reap
            cwd = os.readlink(f"/proc/{pid}/cwd")
            owner = os.stat(f"/proc/{pid}").st_uid
            groups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        ours = f"/{cgroups.PARENT}/{run_dir.name}" in groups or f"/{cgroups.PARENT}/" not in groups
        if cwd.startswith(str(run_dir)) or (uid is not None and owner == uid and ours):
            found.append(int(pid))
    return found


async def test_stop_ends_within_grace_and_leaves_nothing(
    tmp_path: Path, settings: Settings, source: Path
) -> None:
    backend = LocalBackend(settings)
    run = new_run(source)
    # A shell that ignores SIGTERM and has a child: only the SIGKILL after the grace ends it.
    body = """
    import os, signal, subprocess, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen(["/bin/sleep", "600"])
    print("ready", flush=True)
    time.sleep(600)
    """
    stubborn = agent(tmp_path, "stubborn", body)
    command = AgentCommand(argv=[stubborn], env={}, interrupt=b'{"type":"interrupt"}\n')
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, command, {}))
    records: list[Record] = []
    async for record in handle.records(0):
        records.append(record)
        if record.data == b"ready":
            break
    started = time.monotonic()
    await handle.stop(1.0)
    records += await collect(handle.records(records[-1].cursor), timeout=10)
    elapsed = time.monotonic() - started
    last = records[-1].exit
    assert last is not None
    assert last.stopped
    assert elapsed < 3.0
    await asyncio.sleep(0.1)
    uid = settings.sandbox_uid if ROOT else None
    assert leftover_processes(settings.runs_dir / run.id, uid) == []
    await backend.cleanup(run)


async def test_a_stop_writes_the_commands_interrupt_even_after_a_restart(
    tmp_path: Path, settings: Settings, source: Path
) -> None:
    # The interrupt travels in the launch spec to the monitor: a backend object made after a
    # restart knows nothing of the agent, and the stop still interrupts it first.
    run = new_run(source)
    body = """
    import signal, sys
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    print("got " + sys.stdin.readline().strip(), flush=True)
    """
    command = AgentCommand(argv=[agent(tmp_path, "listener", body)], env={}, interrupt=b"halt\n")
    first, _ = await LocalBackend(settings).launch(run, LaunchSpec.of(run.id, command, {}))
    records: list[Record] = []
    async for record in first.records(0):
        records.append(record)
        if record.data == b"ready":
            break
    restarted = LocalBackend(settings)
    handle, _ = await restarted.attach(run)
    await handle.stop(10.0)
    records += await collect(handle.records(records[-1].cursor), timeout=10)
    assert [r.data for r in records if r.kind == "stdout"] == [b"ready", b"got halt"]
    last = records[-1].exit
    assert last is not None and last.stopped
    await restarted.cleanup(run)


async def test_stop_with_sigterm_is_quick(tmp_path: Path, settings: Settings, source: Path) -> None:
    backend = LocalBackend(settings)
    run = new_run(source)
    handle, _ = await backend.launch(
        run, LaunchSpec.of(run.id, AgentCommand(argv=["sleep", "600"], env={}), {})
    )
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await handle.stop(10.0)
    records = await collect(handle.records(0))
    assert time.monotonic() - started < 2.0  # the agent took SIGTERM, no need for the grace
    assert records[-1].exit is not None
    assert records[-1].exit.stopped
    await backend.cleanup(run)


LAUNCHER = """
import asyncio, json, sys
from pathlib import Path
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.backends.local.backend import LocalBackend
from agentfarm.domain import models
from agentfarm.settings import Settings

async def main():
    backend = LocalBackend(Settings(data_dir=Path(sys.argv[1])))
    run = models.Run.model_validate_json(sys.argv[2])
    command = AgentCommand(argv=sys.argv[3:], env={}, stdin=b"go\\n")
    secrets = {"ANTHROPIC_API_KEY": sys.stdin.readline().strip()}
    await backend.launch(run, LaunchSpec.of(run.id, command, secrets))
    print("launched", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""

COUNTER = """
import sys, time
sys.stdin.readline()
for i in range(40):
    print(f"line {i}", flush=True)
    time.sleep(0.02)
"""


async def test_survives_the_server_being_killed(
    tmp_path: Path, settings: Settings, source: Path
) -> None:
    run = new_run(source)
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    env = {**os.environ, "PYTHONPATH": local_backend.PACKAGE_ROOT}
    server = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(settings.data_dir), run.model_dump_json(),
        agent(tmp_path, "counter", COUNTER),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert server.stdin is not None
    assert server.stdout is not None
    server.stdin.write(SECRET.encode() + b"\n")
    await server.stdin.drain()
    assert await asyncio.wait_for(server.stdout.readline(), 30) == b"launched\n"
    server.kill()  # the control plane dies with kill -9 mid-run
    await server.wait()
    server.stdin.close()

    # "Restart": a new backend attaches, reads some, "crashes" again, resumes from a cursor.
    handle, _ = await LocalBackend(settings).attach(run)
    seen: list[Record] = []
    async for record in handle.records(0):
        seen.append(record)
        if record.data == b"line 5":
            break
    handle, _ = await LocalBackend(settings).attach(run)
    seen += await collect(handle.records(seen[-1].cursor))
    lines = stdout_lines(seen)
    assert lines == [f"line {i}".encode() for i in range(40)]
    assert seen[-1].exit is not None
    assert seen[-1].exit.exit_code == 0
    run_dir = settings.runs_dir / run.id
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert SECRET not in ps
    assert SECRET.encode() not in (run_dir / "monitor.json").read_bytes()
    await LocalBackend(settings).cleanup(run)


async def test_secret_not_in_monitor_argv(tmp_path: Path, settings: Settings, source: Path) -> None:
    backend = LocalBackend(settings)
    run = new_run(source)
    handle, _ = await backend.launch(
        run, LaunchSpec.of(run.id, AgentCommand(argv=["sleep", "600"], env={}), {"K": SECRET})
    )
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "agentfarm.backends.local.monitor" in ps
    assert SECRET not in ps
    await handle.stop(0)
    await collect(handle.records(0))
    await backend.cleanup(run)


async def test_monitor_killed_means_lost(tmp_path: Path, settings: Settings, source: Path) -> None:
    backend = LocalBackend(settings)
    run = new_run(source)
    handle, _ = await backend.launch(
        run, LaunchSpec.of(run.id, AgentCommand(argv=["sleep", "600"], env={}), {})
    )
    identity = local_handle.read_identity(settings.runs_dir / run.id)
    assert identity is not None
    os.kill(identity[0], signal.SIGKILL)
    records = await collect(handle.records(0))
    last = records[-1].exit
    assert last is not None
    assert last.lost
    assert "monitor is gone" in (last.error or "")
    await asyncio.sleep(0.2)
    assert (
        leftover_processes(settings.runs_dir / run.id, settings.sandbox_uid if ROOT else None) == []
    )
    await backend.cleanup(run)


HOG = """
import sys, time
sys.stdin.readline()  # the test says go once it knows the limit is in place
chunks = []
while True:
    chunks.append(bytearray(16 * 1024 * 1024))
    time.sleep(0.001)
"""


async def test_memory_limit_oom_kills_a_hog(
    tmp_path: Path, settings: Settings, source: Path
) -> None:
    # Never skipped silently: in CI a host that cannot apply the limit fails this test. As
    # root (cgroup v1 or v2) or with a delegated cgroup v2 subtree, it runs.
    backend = LocalBackend(settings)
    run = new_run(source, memory_mb=64)
    handle, _ = await backend.launch(
        run, LaunchSpec.of(run.id, AgentCommand(argv=[agent(tmp_path, "hog", HOG)], env={}), {})
    )
    records: list[Record] = []
    async with asyncio.timeout(30):
        async for record in handle.records(0):
            records.append(record)
            if record.kind in ("started", "exit"):
                break
    refused = [r.data.decode() for r in records if b"memory limit" in r.data]
    if refused or records[-1].kind != "started":
        await handle.stop(0)
        await collect(handle.records(records[-1].cursor))
        await backend.cleanup(run)
        realparts.missing(
            "a cgroup memory limit",
            f"{refused or records}: run the tests as root, or on a host that delegates a "
            "cgroup v2 subtree with the memory controller to this user",
        )
    await handle.send(b"go\n")
    records += await collect(handle.records(records[-1].cursor))
    last = records[-1].exit
    assert last is not None
    assert last.oom_killed, records
    assert "out of memory" in (last.error or "")
    await backend.cleanup(run)


def test_the_kernel_tells_of_an_oom_without_polling() -> None:
    # cgroup v1: an eventfd on memory.oom_control becomes readable at the OOM, so the monitor
    # reads the counter only then (and every few seconds), not five times a second per run.
    if not ROOT:
        realparts.missing("root for cgroups", "run the integration tests as root")
    group = cgroups.create(f"oomtest-{os.getpid()}", cgroups.Limits(memory_mb=32))
    try:
        notifier = group.oom_notifier()
        if group.version != 1:
            assert notifier is None  # v2: the monitor polls memory.events as before
            return
        assert notifier is not None
        hog = subprocess.Popen(
            [sys.executable, "-c", "b = []\nwhile True: b.append(bytearray(8 << 20))"],
            preexec_fn=group.join,
        )
        try:
            readable, _, _ = select.select([notifier], [], [], 30)
            assert readable == [notifier]
            assert os.read(notifier, 8)
            hog.wait(30)
            assert group.oom_kills() >= 1
        finally:
            hog.kill()
            hog.wait()
            os.close(notifier)
    finally:
        group.destroy()


async def test_unsandboxed_run_says_so(tmp_path: Path, settings: Settings, source: Path) -> None:
    settings.data_dir.mkdir(parents=True)
    settings.data_dir.chmod(0o711)  # tmp_path is traversable; the run dir must be too
    backend = LocalBackend(settings)
    run = new_run(source, mode="none")
    handle, _ = await backend.launch(
        run, LaunchSpec.of(run.id, AgentCommand(argv=["id", "-u"], env={}), {})
    )
    records = await collect(handle.records(0))
    notices = [r.data.decode() for r in records if r.kind == "notice"]
    assert any("unsandboxed" in n for n in notices)
    expected = str(settings.sandbox_uid if ROOT else os.getuid()).encode()
    assert stdout_lines(records) == [expected]
    await backend.cleanup(run)


async def test_missing_bwrap_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, source: Path
) -> None:
    monkeypatch.setattr(local_backend, "find_bwrap", lambda: None)
    run = new_run(source)
    with pytest.raises(errors.ConfigurationError) as caught:
        await LocalBackend(settings).launch(run, LaunchSpec.of(run.id, AgentCommand(["x"], {}), {}))
    assert str(caught.value) == (
        "bubblewrap is not installed: apt-get install bubblewrap "
        "(or set sandbox.mode to none to run unsandboxed)"
    )


async def test_missing_agent_program_is_a_launch_error(settings: Settings, source: Path) -> None:
    run = new_run(source)
    command = AgentCommand(["/nonexistent/agent"], {})
    with pytest.raises(errors.LaunchError, match="was not found"):
        await LocalBackend(settings).launch(run, LaunchSpec.of(run.id, command, {}))


async def test_failed_clone_leaves_no_monitor_behind(tmp_path: Path, settings: Settings) -> None:
    run = new_run(tmp_path / "no-such-repo")
    with pytest.raises(errors.AgentfarmError):
        await LocalBackend(settings).launch(
            run, LaunchSpec.of(run.id, AgentCommand(["/bin/true"], {}), {})
        )
    run_dir = str(settings.runs_dir / run.id)
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc / "cwd").startswith(run_dir):
                    left.append(proc.name)
    assert left == []


# --- adversarial workspaces: what the agent leaves in .git must not act on the host ------------

PLANTER = """
import os, stat, subprocess, sys
markers, evil, common, borrowed = sys.argv[1:5]
def run(*args):
    subprocess.run(["git", *args], check=True)
open("made-by-agent.txt", "w").write("hi\\n")
run("add", "made-by-agent.txt")
run("commit", "-q", "-m", "agent was here")
head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
hook = f"#!/bin/sh\\ntouch {markers}/$(basename $0)\\n"
names = ["pre-push", "post-update", "reference-transaction", "pre-receive", "update",
         "post-receive", "post-checkout", "pre-auto-gc", "push-to-checkout", "fsmonitor-watchman"]
os.makedirs("planted-hooks", exist_ok=True)
for directory in (".git/hooks", "planted-hooks"):
    for name in names:
        path = os.path.join(directory, name)
        open(path, "w").write(hook)
        os.chmod(path, 0o755)
for key, value in [
    ("core.hooksPath", os.path.abspath("planted-hooks")),
    ("core.fsmonitor", f"touch {markers}/fsmonitor"),
    ("core.sshCommand", f"touch {markers}/ssh"),
    ("core.alternateRefsCommand", f"touch {markers}/alternate-refs"),
    ("credential.helper", f"!touch {markers}/credential"),
    ("uploadpack.packObjectsHook", f"touch {markers}/pack-objects"),
    ("remote.origin.pushurl", evil),
    (f"url.{evil}.insteadOf", os.environ["SOURCE"]),
    (f"url.{evil}.pushInsteadOf", os.environ["SOURCE"]),
]:
    run("config", key, value)
open(".git/commondir", "w").write(common + "\\n")
open(".git/info/grafts", "a").write(head.strip() + "\\n")
with open(".git/objects/info/alternates", "a") as fh:
    fh.write(borrowed + "\\n")
print("planted", flush=True)
"""


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def git_out(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


async def test_planted_git_settings_never_act_on_the_host(
    tmp_path: Path, settings: Settings, source: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    evil = tmp_path / "evil.git"
    subprocess.run(["git", "init", "-q", "--bare", str(evil)], check=True)
    common = tmp_path / "host-common.git"  # a host repository the agent points commondir at
    subprocess.run(["git", "init", "-q", "--bare", str(common)], check=True)
    (common / "config").write_text(f'[core]\n\tfsmonitor = "touch {markers}/common"\n')
    borrowed = tmp_path / "other-repo.git"  # objects of a repository the run must not use
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(borrowed)], check=True)
    watched = {p: snapshot(p) for p in (evil, common, borrowed)}
    source_config = (source / ".git" / "config").read_text()

    backend = LocalBackend(settings)
    run = new_run(source)
    argv = [agent(tmp_path, "planter", PLANTER), str(markers), str(evil), str(common)]
    command = AgentCommand(argv=[*argv, str(borrowed / "objects")], env={"SOURCE": str(source)})
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, command, {}))
    records = await collect(handle.records(0))
    assert b"planted" in stdout_lines(records), records
    notices = await handle.finalize()

    # The branch came home, with its real parent (the graft was not used).
    branch = f"agentfarm/{run.id}"
    log = git_out("-C", str(source), "log", "--format=%s", branch).splitlines()
    assert log == ["agent was here", "init"]
    assert "ignored .git/commondir, which the agent wrote: git does not use it" in notices
    assert "ignored .git/info/grafts, which the agent wrote: git does not use it" in notices
    # Nothing the agent planted ran on the host, and nothing outside the run dir changed.
    assert sorted(os.listdir(markers)) == []
    assert git_out("-C", str(evil), "for-each-ref") == ""
    assert {p: snapshot(p) for p in watched} == watched
    assert (source / ".git" / "config").read_text() == source_config
    await backend.cleanup(run)


BREAKER = """
import os, subprocess, sys
how, victim = sys.argv[1:3]
open("made-by-agent.txt", "w").write("hi\\n")
subprocess.run(["git", "add", "made-by-agent.txt"], check=True)
subprocess.run(["git", "commit", "-q", "-m", "agent was here"], check=True)
if how == "git-symlink":
    os.rename(".git", ".git-moved")
    os.symlink(victim, ".git")
elif how == "git-file":
    os.rename(".git", ".git-moved")
    open(".git", "w").write(f"gitdir: {victim}\\n")
elif how == "info-symlink":
    os.rename(".git/objects/info", ".git/objects/info-moved")
    os.symlink(victim, ".git/objects/info")
print("broken", flush=True)
"""


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("git-symlink", "the agent replaced .git with a symlink"),
        ("git-file", "the agent replaced .git with a file"),
        ("info-symlink", "the agent left a symlink at .git/objects/info"),
    ],
)
async def test_a_redirected_git_dir_is_refused_and_says_why(
    tmp_path: Path, settings: Settings, source: Path, how: str, why: str
) -> None:
    # Before issue 7 the server (root) rewrote the `config` or `alternates` of whatever
    # host directory the agent's symlink named.
    victim = tmp_path / "host-dir"
    (victim / "objects" / "info").mkdir(parents=True)
    for name in ("config", "alternates", "objects/info/alternates"):
        (victim / name).write_text("precious\n")
    before = snapshot(victim)
    backend = LocalBackend(settings)
    run = new_run(source)
    command = AgentCommand(argv=[agent(tmp_path, "breaker", BREAKER), how, str(victim)], env={})
    handle, _ = await backend.launch(run, LaunchSpec.of(run.id, command, {}))
    records = await collect(handle.records(0))
    assert b"broken" in stdout_lines(records), records
    notices = await handle.finalize()
    assert snapshot(victim) == before
    branch = f"agentfarm/{run.id}"
    assert notices == [
        f"the branch {branch} was not brought back: {why}; host git does not follow it"
    ]
    refs = git_out("-C", str(source), "for-each-ref", "--format=%(refname)")
    assert f"refs/heads/{branch}" not in refs
    await backend.cleanup(run)


async def test_push_goes_where_the_host_says(tmp_path: Path, source: Path) -> None:
    """The push half (remote repositories): an agent-set pushurl or pushInsteadOf is gone
    once the workspace is sanitized, so the branch reaches the real remote only."""
    remote, evil = tmp_path / "remote.git", tmp_path / "evil.git"
    for bare in (remote, evil):
        subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    workspace = tmp_path / "ws"
    await local_git.clone(str(source), workspace, None)
    await local_git.new_branch(workspace, "agentfarm/x")
    config = (workspace / ".git" / "config").read_text()
    borrowed = (workspace / ".git" / "objects" / "info" / "alternates").read_text()
    ident = ["-c", "user.name=a", "-c", "user.email=a@example.com"]
    (workspace / "f").write_text("x\n")
    subprocess.run(["git", "-C", str(workspace), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(workspace), *ident, "commit", "-qm", "x"], check=True)
    for key, value in [
        ("remote.origin.pushurl", str(evil)),
        (f"url.{evil}.pushInsteadOf", str(remote)),
        (f"url.{evil}.insteadOf", str(remote)),
    ]:
        subprocess.run(["git", "-C", str(workspace), "config", key, value], check=True)
    assert local_git.sanitize(workspace, config, borrowed) == []
    await local_git.push(str(remote), workspace, "agentfarm/x")
    assert "refs/heads/agentfarm/x" in git_out("-C", str(remote), "for-each-ref")
    assert git_out("-C", str(evil), "for-each-ref") == ""


async def test_without_root_every_run_says_it_shares_the_servers_uid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings, source: Path
) -> None:
    # The launch path as a non-root server sees it (the monitor still runs as the real uid).
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    backend = LocalBackend(settings)
    run = new_run(source)
    handle, info = await backend.launch(
        run, LaunchSpec.of(run.id, AgentCommand(argv=["/bin/true"], env={}), {})
    )
    assert any(
        notice.startswith(
            "the server does not run as root: the agent runs as the server's own user (uid 1000)"
        )
        for notice in info.notices
    ), info.notices
    await collect(handle.records(0))
    monkeypatch.undo()
    await backend.cleanup(run)


PACED = """
import sys, time
sys.stdin.readline()
for i in range(3):
    time.sleep(1.0)  # quiet in between: each line comes after the reader went to sleep
    print(f"line {i}", flush=True)
"""


def inotify_fds() -> int:
    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if "inotify" in _link(f"/proc/self/fd/{fd}"))


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


async def test_runs_share_the_backends_one_inotify_instance(
    tmp_path: Path, settings: Settings, source: Path
) -> None:
    backend = LocalBackend(settings)
    before = inotify_fds()
    runs = [new_run(source, network="none") for _ in range(3)]
    command = AgentCommand(argv=[agent(tmp_path, "paced", PACED)], env={}, stdin=b"go\n")
    launches = [backend.launch(r, LaunchSpec.of(r.id, command, {})) for r in runs]
    handles = [handle for handle, _ in await asyncio.gather(*launches)]
    try:
        streams = [asyncio.ensure_future(collect(h.records(0))) for h in handles]
        await asyncio.sleep(0.2)
        assert len(backend.watcher._dirs) == 3  # one watch per run directory
        assert inotify_fds() == before + 1  # one instance for all of them
        for records in await asyncio.gather(*streams):
            assert stdout_lines(records) == [b"line 0", b"line 1", b"line 2"]
            last = records[-1].exit
            assert last is not None
            assert last.exit_code == 0
        assert backend.watcher.unavailable is None
        assert backend.watcher._dirs == {}  # the watches went with their readers
    finally:
        for run in runs:
            await backend.cleanup(run)
        await backend.aclose()
    assert inotify_fds() == before
