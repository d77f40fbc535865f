"""One Kubernetes run as the supervisor follows it: records from the pod, stop, finalize.

Records come from two places: the pod's status (notices while it starts, ``started``, the
exit) and the agent container's log, which the image's entrypoint writes: every line is
``\\x1e<kind><seq> <payload>`` (kind ``O`` the agent's stdout, ``E`` its stderr, ``N`` the
entrypoint's notices, because the log API merges both streams; ``seq`` counts lines from 1).

Cursors are ``seq << 8 | slot``: log line ``seq`` has cursor ``seq << 8``; notices that follow
it take slots 1..253; ``started`` is ``254`` (before any line) and the exit ``seq << 8 | 255``.
The sequence number, not a line's position in what the log API returns, is the cursor: the
kubelet rotates container logs and then serves only the newest file. After a restart (or a
broken stream) ``records(after)`` re-reads the log and skips what the stored cursor covers, so
nothing is doubled; lines the kubelet rotated away before they were read become one notice.

The pod's state comes from the backend's shared watch (``watch.PodWatch``); its log is followed
only while the agent runs, in a log slot (``slots.LogSlots``), and reopened from shortly before
its last line when it breaks (with backoff), goes quiet (a follow may stay on a file the kubelet
rotated away) or has to share its slot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import aiohttp

from agentfarm.backends.base import BranchOutcome, ExitInfo, Record, RecordKind
from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.backends.kubernetes import follow as k8s_follow
from agentfarm.backends.kubernetes import lines as k8s_lines
from agentfarm.backends.kubernetes import manifests, sessions, status
from agentfarm.backends.kubernetes import slots as k8s_slots
from agentfarm.backends.kubernetes import watch as k8s_watch
from agentfarm.backends.kubernetes.lines import BRANCH_NOTICE as BRANCH_NOTICE
from agentfarm.backends.kubernetes.lines import EXITED_NOTICE, parse_exited
from agentfarm.backends.kubernetes.lines import parse_branch as parse_branch
from agentfarm.backends.kubernetes.lines import parse_line as parse_line
from agentfarm.domain import errors

log = logging.getLogger(__name__)

#: What the control plane execs in the agent container to reach the entrypoint's control
#: socket (a follow-up, an interrupt): the request on its stdin, the reply on its stdout.
CONTROL_ARGV = ["python3", manifests.ENTRYPOINT, "control"]
#: How long finalize waits for a finishing pod's push (the entrypoint gives git 300 s).
FINISH_SECONDS = 420.0
#: After the log ends, how long to wait for the kubelet to report the container's exit.
EXIT_REPORT_SECONDS = 20.0
RETRYABLE = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
#: Log errors after which the log is read again (with backoff): the container has not
#: started or has ended (400), the pod went (404, the exit says it), the API server or the
#: kubelet is busy or restarting.
LOG_RETRY_STATUS = frozenset({400, 404, *k8s_watch.TEMPORARY_STATUS})
#: A reopened follow starts this long before the last line read (the kubelet's since-time
#: counts on the node's clock; the skip by sequence number drops what was read before).
SINCE_MARGIN_SECONDS = 30


@dataclass
class RunState:
    namespace: str
    name: str
    stopping: bool = False
    #: The last log line's sequence number before this agent process (resumed in the pod):
    #: lines up to it are an earlier process's, and the cursor counts from it.
    base: int = 0
    #: The pod waits for resume or finish after its agent exits (AGENTFARM_RESUME_WAIT).
    waits: bool = False


class KubernetesHandle:
    def __init__(
        self,
        run_id: str,
        api: k8s_api.Api,
        state: RunState,
        *,
        delete_pod_now: bool = False,
        pods: k8s_watch.PodSource | None = None,
        log_slots: k8s_slots.LogSlots | None = None,
        keeper: sessions.Keeper | None = None,
    ) -> None:
        self.run_id = run_id
        self._api = api
        self._state = state
        self._pods = pods or k8s_watch.DirectPods(api, state.namespace)
        self._slots = log_slots or k8s_slots.LogSlots(k8s_slots.UNLIMITED)
        self._delete_pod_now = delete_pod_now
        #: Carries the agent's session out of the pod at the run's end (a later continue).
        self._keeper = keeper
        #: The entrypoint pushes the branch and says where it ended up in a notice.
        self.branch_outcome: BranchOutcome | None = None

    async def records(self, after: int) -> AsyncIterator[Record]:
        cursor = k8s_lines.Cursor()
        ns, name = self._state.namespace, self._state.name

        def keep(kind: RecordKind, at: int | None, data: bytes = b"") -> Record | None:
            return Record(at, kind, data) if at is not None and at > after else None

        pod = await self._pods.get(name)
        last_notice: str | None = None
        while True:
            if pod is None:
                yield Record(cursor.exit(), "exit", exit=status.gone(stopping=self.stopping))
                return
            view = status.describe(pod, stopping=self.stopping)
            if view.agent_started or view.exit is not None:
                break
            if view.notice and view.notice != last_notice:
                last_notice = view.notice
                if record := keep("notice", cursor.notice(), view.notice.encode()):
                    yield record
            pod = await self._pods.next_state(pod)

        if view.agent_started:
            node = (pod.get("spec") or {}).get("nodeName")
            started = json.dumps({"pod": f"{ns}/{name}", "node": node}).encode()
            if record := keep("started", k8s_lines.STARTED_SLOT, started):
                yield record
        elif view.exit is not None:
            if not view.pod_done:
                await self._api.delete_pod(ns, name, grace_seconds=0)
            yield Record(cursor.exit(), "exit", exit=view.exit)
            return

        # The agent runs (or ran): follow its log; reopen it if it breaks or goes quiet,
        # skipping lines seen.
        follow = True
        numbered = False
        last_kind: RecordKind | None = None
        loop = asyncio.get_running_loop()
        last_line_at: float | None = None
        since: int | None = None
        quiet = k8s_follow.QuietTimer()
        backoff = k8s_watch.Backoff(first=0.5, cap=10.0)
        denials = k8s_watch.Denials()
        clone_error: str | None = None  # the entrypoint's clone failed: the run's error
        while True:
            went_quiet: k8s_follow.Quiet | None = None
            broken = False
            read_any = progressed = False
            try:
                async with contextlib.aclosing(self._log(follow, since, quiet)) as lines:
                    async for line in lines:
                        read_any = True
                        last_line_at = loop.time()
                        seq, kind, data = parse_line(line)
                        if seq is not None and self._state.base:
                            numbered = True
                            if seq <= self._state.base:  # an earlier agent process's
                                last_kind = None
                                continue
                            seq -= self._state.base
                        if seq is None and numbered:
                            # The rest of a line longer than api.MAX_LINE: same kind, next slot.
                            if last_kind is not None and (
                                record := keep(last_kind, cursor.notice(), data)
                            ):
                                yield record
                            continue
                        if seq is None:  # an image from before sequence numbers: count lines
                            seq = cursor.line + 1
                        else:
                            numbered = True
                        if seq <= cursor.line:
                            last_kind = None  # read before: so is the rest of it
                            continue
                        last_kind = kind
                        progressed = True
                        quiet.news()
                        lost = range(max(cursor.line, after >> 8) + 1, seq)
                        if lost:
                            cursor.advance(seq - 1)
                            what = k8s_lines.rotated_notice(lost).encode()
                            if record := keep("notice", cursor.notice(), what):
                                yield record
                        at = cursor.advance(seq)
                        if kind == "notice" and data.startswith(BRANCH_NOTICE):
                            # Read on every pass (also before ``after``): finalize reports it.
                            self.branch_outcome = parse_branch(data) or self.branch_outcome
                            continue
                        if kind == "notice" and (failed := k8s_lines.clone_failed(data)):
                            clone_error, data = failed, failed.encode()
                        if kind == "notice" and data.startswith(EXITED_NOTICE):
                            # The agent exited; the pod waits for resume or finish (finalize).
                            exited = parse_exited(data, stopping=self.stopping)
                            yield Record(cursor.exit(), "exit", exit=exited)
                            return
                        if at > after:
                            yield Record(at, kind, data)
            except k8s_follow.Quiet as exc:
                went_quiet = exc
            except k8s_api.ApiError as exc:
                if exc.status not in LOG_RETRY_STATUS and not denials.excused(exc):
                    raise
                broken = True
                log.info("log stream of %s/%s: %s", ns, name, exc)
            except RETRYABLE as exc:
                broken = True
                log.info("log stream of %s/%s broke: %r; reopening", ns, name, exc)
            if read_any:
                backoff.reset()
                denials.clear()
            # Reopen from a little before the last line: a reopen costs a short read.
            since = None
            if last_line_at is not None:
                since = math.ceil(loop.time() - last_line_at) + SINCE_MARGIN_SECONDS
            # A quiet follow is reopened, unless its container has ended meanwhile (its
            # follow should have ended too): then it is read once more, as a broken one.
            if went_quiet is not None and (went_quiet.shared or await self._wait_exit(0.0) is None):
                if not went_quiet.shared and not progressed:
                    quiet.nothing_new()
                continue
            broken = broken or went_quiet is not None
            quiet.news()
            # A log that ended (not broke) means the container is ending: give the kubelet a
            # moment to say how. A broken one may belong to a running agent: look, go on.
            exit_info = await self._wait_exit(0.0 if broken else EXIT_REPORT_SECONDS)
            if exit_info is not None and not follow:
                yield Record(
                    cursor.exit(), "exit", exit=k8s_lines.with_error(exit_info, clone_error)
                )
                return
            # Read once more without follow once the container has ended (drains lines a
            # broken stream missed); keep following while it still runs.
            follow = exit_info is None
            if follow or broken:
                await backoff.sleep()

    def _log(
        self, follow: bool, since: int | None, quiet: k8s_follow.QuietTimer
    ) -> AsyncGenerator[bytes, None]:
        ns, name, log_slots = self._state.namespace, self._state.name, self._slots
        return k8s_follow.lines(
            self._api, ns, name, log_slots, follow=follow, since=since, quiet=quiet
        )

    @property
    def stopping(self) -> bool:
        return self._state.stopping

    async def _wait_exit(self, wait: float = EXIT_REPORT_SECONDS) -> ExitInfo | None:
        """The run's exit if the agent container has ended (waiting up to ``wait`` seconds
        for the kubelet to say so, after its log ended), else None."""
        name = self._state.name
        pod = await self._pods.get(name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            if pod is None:
                return status.gone(stopping=self.stopping)
            view = status.describe(pod, stopping=self.stopping)
            if view.exit is not None:
                return view.exit
            if loop.time() >= deadline:
                return None
            try:
                async with asyncio.timeout(max(0.1, deadline - loop.time())):
                    pod = await self._pods.next_state(pod)
            except TimeoutError:
                pod = await self._pods.get(name)

    async def send(self, data: bytes) -> None:
        await self.control({"op": "send", "data": base64.b64encode(data).decode()})

    async def interrupt(self) -> None:
        await self.control({"op": "interrupt"})

    async def control(self, request: dict[str, object]) -> dict[str, object]:
        """One request to the entrypoint's control socket, through ``entrypoint.py control``
        exec'd in the agent container (deploy/agent/entrypoint.py). Its reply comes from a
        hostile pod: only ``ok`` and a short, printable ``error`` are read."""
        ns, name = self._state.namespace, self._state.name
        line = json.dumps(request).encode() + b"\n"
        try:
            out, failure = await self._api.exec_pod(
                ns, name, manifests.AGENT_CONTAINER, CONTROL_ARGV, line
            )
        except k8s_api.ApiError as exc:
            raise errors.BackendError(
                f"cannot reach the agent of run {self.run_id} in pod {ns}/{name} ({exc}); "
                "the pod may have ended, or the control plane may lack the pods/exec permission"
            ) from None
        try:
            reply = json.loads(out.splitlines()[0]) if out.strip() else None
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            why = failure or "no reply"
            raise errors.BackendError(f"the agent of run {self.run_id} did not answer ({why})")
        if reply.get("ok") is not True:
            error = reply.get("error")
            text = error if isinstance(error, str) else "refused"
            printable = "".join(c if c.isprintable() else " " for c in text[:300])
            raise errors.BackendError(f"run {self.run_id}: {printable}")
        return reply

    async def stop(self, grace: float) -> None:
        """End the agent. A pod that waits after its agent (a run resumable in its pod) ends
        only the agent: the run's end finishes the pod (its branch pushed), a stalled run is
        resumed in it. Else, or when the pod does not answer, the pod is deleted."""
        self._state.stopping = True
        if self._state.waits:
            try:
                await self.control({"op": "stop", "grace": max(1, math.ceil(grace))})
                return
            except errors.BackendError as exc:
                log.info("run %s: stopping its agent in the pod: %s", self.run_id, exc)
        await self._api.delete_pod(
            self._state.namespace, self._state.name, grace_seconds=max(1, math.ceil(grace))
        )

    async def finalize(self) -> list[str]:
        """The run is over: its Secret (credentials, prompt) goes now; the pod stays for its
        logs until the sweeper removes it (AGENTFARM_K8S_CLEANUP_AFTER_SECONDS), or goes now
        when that is 0. The entrypoint pushed the branch and said so in the log."""
        ns, name = self._state.namespace, self._state.name
        notices = await self._finish()
        await self._api.delete_secret(ns, name)
        if self._delete_pod_now:
            await self._api.delete_pod(ns, name, grace_seconds=1)
        return notices

    async def _finish(self) -> list[str]:
        """A pod that waits after its agent exited (a run that could have been resumed in
        it) is told to finish: it pushes the branch and exits. Its notices from then on
        (where the branch went among them) are read here."""
        ns, name, keeper = self._state.namespace, self._state.name, self._keeper
        pod = await self._api.get_pod(ns, name)
        if pod is None or not status.agent_running(pod) or not self._state.waits:
            if keeper is not None:
                await keeper.missed(self.run_id, sessions.why_missed(pod, self._state.waits))
            return []
        kept = await keeper.carry_out(self._api, ns, name, self.run_id) if keeper else None
        try:
            await self.control({"op": "finish"})
        except errors.BackendError as exc:  # the pod is going away, or its agent still runs
            log.info("run %s: finish: %s", self.run_id, exc)
            return [kept] if kept else []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINISH_SECONDS
        while await self._wait_exit() is None and loop.time() < deadline:
            pass
        notices: list[str] = []
        try:
            async for line in self._log(False, None, k8s_follow.QuietTimer()):
                _, kind, data = parse_line(line)
                if kind != "notice":
                    continue
                if data.startswith(EXITED_NOTICE):
                    notices = []  # what came before was an agent process's own
                elif data.startswith(BRANCH_NOTICE):
                    self.branch_outcome = parse_branch(data) or self.branch_outcome
                else:
                    notices.append(data.decode("utf-8", "replace"))
        except (k8s_api.ApiError, *RETRYABLE) as exc:
            notices.append(f"reading the pod's last words (where its branch went) failed: {exc}")
        if keeper is not None:
            await keeper.note_branch(self.run_id, self.branch_outcome)
        return [kept, *notices] if kept else notices

    async def discard_output(self) -> None:
        """Nothing to do: the output is the pod's log, which goes with the pod."""
