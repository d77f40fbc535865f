"""Continuing an ended Kubernetes run, at unit level: at the run's end the handle carries the
agent's session out of the waiting pod (before it is told to finish) and the control plane
keeps it, checked, in the run's directory, or notes why it could not; a continue starts a new
pod on the run's branch, puts the session back and resumes it there; and the bundle's bytes
are treated as hostile. The real pod is on the kubelet tier (tests/k8s/test_continue_node.py).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentfarm.backends.base import BranchOutcome
from agentfarm.backends.kubernetes import backend as k8s_backend
from agentfarm.backends.kubernetes import continued, sessions
from agentfarm.backends.kubernetes import handle as k8s_handle
from agentfarm.domain import errors, launch, models
from tests.unit.conftest import make_settings
from tests.unit.test_k8s_resume import DONE, FIRST, RUNNING, WaitingPod, notice

SESSION = "0b7c5a9e-6f7d-4c1e-9a55-2f0e8d7c6b5a"
NAME = f"{sessions.PROJECT}/{SESSION}.jsonl"
TRANSCRIPT = b'{"type":"user","message":"write a file"}\n' * 50


def bundle_of(contents: list[tuple[str, bytes]], **header: object) -> bytes:
    packed = zlib.compress(b"".join(data for _, data in contents))
    head = {"files": [{"name": n, "size": len(d)} for n, d in contents], "size": len(packed)}
    return json.dumps(head | header).encode() + b"\n" + packed


GOOD = bundle_of([(NAME, TRANSCRIPT)])


# --- the bundle ----------------------------------------------------------------------------
def test_a_good_bundle_is_taken_as_it_came() -> None:
    bundle = sessions.parse(GOOD)
    assert bundle.files == ((NAME, len(TRANSCRIPT)),)
    assert bundle.to_bytes() == GOOD


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "no bundle header"),
        (b"not json\n", "Expecting value"),
        (bundle_of([(f"{sessions.PROJECT}/../x.jsonl", b"x")]), "unexpected file"),
        (bundle_of([(".credentials.json", b"x")]), "unexpected file"),
        (bundle_of([(NAME, b"x")], files=[{"name": NAME, "size": True}]), "count of bytes"),
        (bundle_of([(NAME, b"abc")])[:-2], "cut short"),
        # A bomb: a few KiB that would unpack to 64 MiB, declared as 10 bytes.
        (
            json.dumps({"files": [{"name": NAME, "size": 10}], "size": 65}).encode()
            + b"\n" + zlib.compress(b"\0" * (64 << 20))[:65],
            "do not add up",
        ),
        (
            json.dumps({"files": [{"name": NAME, "size": sessions.LIMIT + 1}], "size": 0}).encode()
            + b"\n",
            "over 64 MiB",
        ),
        (b'{"error": "the files are over 64 MiB\\u001b[31m"}\n', "over 64 MiB [31m"),
    ],
)  # fmt: skip
def test_a_hostile_bundle_is_refused_with_what_is_wrong(raw: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[")):
        sessions.parse(raw)


# --- at the run's end ----------------------------------------------------------------------
class SessionPod(WaitingPod):
    """A waiting pod (test_k8s_resume) that also answers ``session-out``."""

    def __init__(self, log: list[bytes], bundle: bytes = GOOD) -> None:
        super().__init__(log)
        self.bundle = bundle
        self.commands: list[str] = []

    async def exec_pod(
        self, namespace: str, name: str, container: str, command: list[str], stdin: bytes,
        *, limit: int = 0, seconds: float = 0,
    ) -> tuple[bytes, str | None]:  # fmt: skip
        self.commands.append(command[-1])
        if command == sessions.OUT_ARGV:
            assert limit > sessions.LIMIT
            return self.bundle, None
        return await super().exec_pod(namespace, name, container, command, stdin)


def handle(api: WaitingPod, keeper: sessions.Keeper) -> k8s_handle.KubernetesHandle:
    state = k8s_handle.RunState("ns", "agentfarm-run-r1", waits=True)
    return k8s_handle.KubernetesHandle("r1", api, state, keeper=keeper)  # type: ignore[arg-type]


async def test_the_session_is_carried_out_before_the_pod_finishes(tmp_path: Path) -> None:
    keeper = sessions.Keeper(tmp_path)
    api = SessionPod(list(FIRST))
    notices = await handle(api, keeper).finalize()
    assert api.commands == ["session-out", "control"]  # then finish: the pod pushes, exits
    assert api.requests == [{"op": "finish"}]
    assert notices[0] == "kept the agent's session (1 file(s), 3 KiB) to continue the run later"
    assert (tmp_path / "r1" / sessions.BUNDLE).read_bytes() == GOOD
    assert (tmp_path / "r1" / sessions.BUNDLE).stat().st_mode & 0o777 == 0o600
    assert await keeper.refusal("r1") is None
    bundle, note = await keeper.load("r1")
    assert bundle.files == ((NAME, len(TRANSCRIPT)),)
    assert note["branch_pushed"] is True  # the pod pushed it (test_k8s_resume's outcome)
    await keeper.remove("r1")
    assert not (tmp_path / "r1").exists()


async def test_a_session_that_cannot_be_carried_out_says_why_on_continue(tmp_path: Path) -> None:
    keeper = sessions.Keeper(tmp_path)
    assert "no session of its agent was kept" in str(await keeper.refusal("r1"))
    too_big = b'{"error": "the agent\'s session files are over 64 MiB"}\n'
    notices = await handle(SessionPod(list(FIRST), too_big), keeper).finalize()
    assert notices[0] == (
        "the agent's session could not be carried out of its pod: the agent's session files "
        "are over 64 MiB; the run cannot be continued (launch a new run on its branch instead)"
    )
    assert "over 64 MiB" in str(await keeper.refusal("r1"))
    with pytest.raises(errors.ConflictError, match=r"r1 cannot be continued: .*over 64 MiB"):
        await keeper.load("r1")


async def test_a_pod_gone_before_the_end_keeps_the_session_of_an_earlier_end(
    tmp_path: Path,
) -> None:
    keeper = sessions.Keeper(tmp_path)
    ended = SessionPod(list(FIRST))
    ended.pod = DONE
    await handle(ended, keeper).finalize()
    assert "had ended before the run's end" in str(await keeper.refusal("r1"))
    await handle(SessionPod(list(FIRST)), keeper).finalize()  # kept at this end
    await handle(ended, keeper).finalize()  # a continued pod lost: no push since
    assert await keeper.refusal("r1") is None
    unwaiting = k8s_handle.KubernetesHandle(
        "r2", ended, k8s_handle.RunState("ns", "p"), keeper=keeper,  # type: ignore[arg-type]
    )  # fmt: skip
    await unwaiting.finalize()
    assert "AGENTFARM_K8S_RESUME_WAIT_SECONDS is 0" in str(await keeper.refusal("r2"))


async def test_a_pod_with_no_session_files_says_nothing_and_keeps_an_earlier_one(
    tmp_path: Path,
) -> None:
    keeper = sessions.Keeper(tmp_path)
    empty = bundle_of([])
    notices = await handle(SessionPod(list(FIRST), empty), keeper).finalize()
    assert notices == ["pushed 2 commit(s) to agentfarm/r1 (last: b x)"]  # no word of it
    assert "held no session files" in str(await keeper.refusal("r1"))
    await handle(SessionPod(list(FIRST)), keeper).finalize()
    await handle(SessionPod(list(FIRST), empty), keeper).finalize()
    assert await keeper.refusal("r1") is None


async def test_the_branch_stays_known_as_pushed_across_ends(tmp_path: Path) -> None:
    keeper = sessions.Keeper(tmp_path)
    await handle(SessionPod(list(FIRST)), keeper).finalize()
    nothing = BranchOutcome("agentfarm/r1", "a" * 40, "a" * 40, 0, pushed=False)
    await keeper.note_branch("r1", nothing)
    _, note = await keeper.load("r1")
    assert note["branch_pushed"] is True


# --- on continue ---------------------------------------------------------------------------
class Cluster:
    """Plays the API for a continued run: the earlier pod's leftovers, the new pod (running
    once created), the execs in it."""

    def __init__(self, *, put_back: dict[str, object] | None = None) -> None:
        self.pods: dict[str, dict[str, Any]] = {"agentfarm-run-r1": DONE}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.restored = b""
        self.put_back = put_back or {"ok": True, "files": 1}
        self.idle_reads = 1  # log reads before the entrypoint says its idle process exited
        self.new_pod = RUNNING
        self.log: list[bytes] | None = None  # the new pod's log, when not the idle process's

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create secret")
        self.secrets[body["metadata"]["name"]] = body
        return body

    async def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create pod")
        assert body["metadata"]["name"] not in self.pods, "the earlier pod is still there"
        self.created.append(body)
        self.pods[body["metadata"]["name"]] = self.new_pod
        return {"metadata": {"name": body["metadata"]["name"], "uid": "u2"}}

    async def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append("patch secret")

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(name)

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get(name)

    async def list_pods(self, namespace: str, selector: str) -> dict[str, Any]:
        return {"items": []}

    async def pod_log(
        self, namespace: str, name: str, container: str, *, follow: bool
    ) -> AsyncIterator[bytes]:
        self.calls.append("log")
        if self.log is not None:
            for line in self.log:
                yield line
            return
        if self.idle_reads:
            self.idle_reads -= 1
            return
        yield notice(1, 'agentfarm.exited {"code": 0}')

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int) -> None:
        self.calls.append(f"delete pod (grace {grace_seconds})")
        self.pods.pop(name, None)

    async def delete_secret(self, namespace: str, name: str) -> None:
        self.calls.append("delete secret")
        self.secrets.pop(name, None)

    async def exec_pod(
        self, namespace: str, name: str, container: str, command: list[str], stdin: bytes,
        *, limit: int = 0, seconds: float = 0,
    ) -> tuple[bytes, str | None]:  # fmt: skip
        if command == sessions.IN_ARGV:
            self.calls.append("session-in")
            self.restored = stdin
            return json.dumps(self.put_back).encode() + b"\n", None
        request = json.loads(stdin)
        self.calls.append(request["op"])
        return b'{"ok": true, "seq": 1}\n', None


def run_and_spec(base_branch: str = "main") -> tuple[models.Run, launch.LaunchSpec]:
    spec = models.AgentSpec(
        repo="https://example.org/app.git", base_branch=base_branch, prompt="go",
        backend={"type": "kubernetes", "image": "agent:1"},
    )  # fmt: skip
    run = models.Run(id="r1", spec=spec, branch="agentfarm/r1", session_id=SESSION)
    command = launch.AgentCommand(
        argv=["claude", "-p", "--resume", SESSION], env={"X": "1"}, stdin=b"and the docs\n",
        close_stdin_after=("result",),
    )  # fmt: skip
    return run, launch.LaunchSpec(run_id="r1", branch="agentfarm/r1", command=command)


def backend_on(api: Cluster, tmp_path: Path) -> k8s_backend.KubernetesBackend:
    settings = make_settings(tmp_path, k8s_cleanup_after_seconds=0, k8s_image="agent:1")
    b = k8s_backend.KubernetesBackend(settings)
    b._api = api  # type: ignore[assignment]
    return b


async def keep(b: k8s_backend.KubernetesBackend, *, pushed: bool) -> None:
    await b._keeper._write_note("r1", {"ok": True})
    await b._keeper.carry_out(SessionPod([]), "ns", "p", "r1")  # type: ignore[arg-type]
    outcome = BranchOutcome("agentfarm/r1", "a" * 40, "b" * 40, 1 if pushed else 0, pushed)
    await b._keeper.note_branch("r1", outcome)


def env_of(pod: dict[str, Any], container: str) -> dict[str, str]:
    spec = pod["spec"]
    found = [c for c in spec["containers"] if c["name"] == container]
    return {e["name"]: e.get("value", "") for e in found[0]["env"]}


async def test_a_continue_resumes_the_session_in_a_new_pod_on_the_pushed_branch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(continued, "POLL_SECONDS", 0.01)
    api = Cluster()
    b = backend_on(api, tmp_path)
    run, spec = run_and_spec()
    await keep(b, pushed=True)
    assert await b.continue_refusal(run) is None
    handle, info = await b.continue_ended(run, spec)
    assert api.calls == [
        "delete pod (grace 0)", "delete secret",  # the earlier pod's leftovers go first
        "create secret", "create pod", "patch secret",
        "log", "log",  # the session goes in once the idle first process has exited
        "session-in", "resume", "patch secret",
    ]  # fmt: skip
    (pod,) = api.created
    clone = env_of(pod, "agent")  # the agent container clones first
    assert clone["AGENTFARM_BASE_BRANCH"] == clone["AGENTFARM_BRANCH"] == "agentfarm/r1"
    agent = pod["spec"]["containers"][0]
    assert agent["command"][-3:] == list(continued.IDLE_ARGV)  # idle, then resumed
    assert env_of(pod, "agent")["AGENTFARM_RESUME_WAIT"] != "0"
    assert sessions.parse(api.restored).files == ((NAME, len(TRANSCRIPT)),)
    assert info.notices[-1] == (
        "continued the run in a new pod ns/agentfarm-run-r1 on its branch, the agent's "
        "session put back (1 file(s))"
    ).replace("ns/", f"{b.settings.k8s_namespace}/")
    assert handle._state.base == 1 and handle._state.waits


async def test_a_branch_never_pushed_is_made_again_from_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(continued, "POLL_SECONDS", 0.01)
    api = Cluster()
    b = backend_on(api, tmp_path)
    run, spec = run_and_spec()
    await keep(b, pushed=False)
    _, info = await b.continue_ended(run, spec)
    clone = env_of(api.created[0], "agent")
    assert (clone["AGENTFARM_BASE_BRANCH"], clone["AGENTFARM_BRANCH"]) == ("main", "agentfarm/r1")
    assert "made again from main (none pushed)" in info.notices[-1]


async def test_a_session_the_new_pod_refuses_ends_the_attempt_and_keeps_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(continued, "POLL_SECONDS", 0.01)
    api = Cluster(put_back={"ok": False, "error": "cannot restore: disk full\x1b"})
    b = backend_on(api, tmp_path)
    run, spec = run_and_spec()
    await keep(b, pushed=True)
    with pytest.raises(
        errors.BackendError, match=r"could not be put back .*: cannot restore: disk"
    ):
        await b.continue_ended(run, spec)
    assert api.pods == {} and api.secrets == {}  # the new pod went again
    assert await b.continue_refusal(run) is None  # and the session is still there


async def test_a_new_pod_whose_clone_fails_says_so_and_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(continued, "POLL_SECONDS", 0.01)
    api = Cluster()
    clone = {"name": "clone", "state": {"terminated": {"exitCode": 128, "message": "gone"}}}
    api.new_pod = {"status": {"phase": "Failed", "initContainerStatuses": [clone]}}
    b = backend_on(api, tmp_path)
    run, spec = run_and_spec()
    await keep(b, pushed=True)
    with pytest.raises(errors.LaunchError, match="before the agent could resume its session: "
                       "cloning the repository failed: gone"):  # fmt: skip
        await b.continue_ended(run, spec)
    assert api.pods == {} and api.secrets == {}
    assert "session-in" not in api.calls


async def test_a_new_pod_whose_clone_in_its_agent_container_fails_says_why_and_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clone runs before the agent in its container (no init container): git's reason
    comes from the entrypoint's ``agentfarm.clone-failed`` notice in the pod's log."""
    monkeypatch.setattr(continued, "POLL_SECONDS", 0.01)
    api = Cluster()
    agent = {"name": "agent", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    api.new_pod = {"status": {"phase": "Failed", "containerStatuses": [agent]}}
    said = json.dumps({"error": "git clone: fatal: remote branch agentfarm/r1 not found"})
    api.log = [notice(1, "cloning https://x/y"), notice(2, f"agentfarm.clone-failed {said}")]
    b = backend_on(api, tmp_path)
    run, spec = run_and_spec()
    await keep(b, pushed=True)
    why = "resume its session: cloning the repository failed: git clone: fatal: remote branch"
    with pytest.raises(errors.LaunchError, match=why):
        await b.continue_ended(run, spec)
    assert api.pods == {} and api.secrets == {}
    assert "session-in" not in api.calls


async def test_no_kept_session_or_no_wait_is_a_409_that_says_why(tmp_path: Path) -> None:
    b = backend_on(Cluster(), tmp_path)
    run, spec = run_and_spec()
    with pytest.raises(errors.ConflictError, match="r1 cannot be continued: no session"):
        await b.continue_ended(run, spec)
    settings = make_settings(tmp_path, k8s_resume_wait_seconds=0)
    refusal = await k8s_backend.KubernetesBackend(settings).continue_refusal(run)
    assert refusal is not None and "AGENTFARM_K8S_RESUME_WAIT_SECONDS is 0" in refusal
