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
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from agentfarm.backends.base import BranchOutcome, ExitInfo, Record, RecordKind
from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.backends.kubernetes import manifests, sessions, status
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
STARTED_SLOT = 254
EXIT_SLOT = 255
#: How long the watch on a starting pod lasts before it is renewed (server side).
WATCH_SECONDS = 60
#: After the log ends, how long to wait for the kubelet to report the container's exit.
EXIT_REPORT_SECONDS = 20.0
RETRYABLE = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
#: A followed log that brings nothing for this long is reopened. The kubelet rotates a
#: container's log (checking every 10 s); a follow that began before the rotation may keep
#: reading the old file (Kubernetes 1.20 does), and what is in neither is lost.
QUIET_REOPEN_SECONDS = 5.0
#: A reopened follow starts this long before the last line read (the kubelet's since-time
#: counts on the node's clock; the skip by sequence number drops what was read before).
SINCE_MARGIN_SECONDS = 30


class _Quiet(Exception):
    """A followed log stream brought nothing for QUIET_REOPEN_SECONDS."""


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


class _Cursor:
    def __init__(self) -> None:
        self.line = 0
        self.slot = 0

    def notice(self) -> int | None:
        if self.slot >= STARTED_SLOT - 1:
            return None  # too many notices between two lines: drop the rest
        self.slot += 1
        return (self.line << 8) | self.slot

    def advance(self, line: int) -> int:
        self.line, self.slot = line, 0
        return line << 8

    def exit(self) -> int:
        return (self.line << 8) | EXIT_SLOT


def _rotated_notice(lost: range) -> str:
    lines = f"line {lost.start}" if len(lost) == 1 else f"lines {lost.start}-{lost[-1]}"
    return (
        f"log {lines} of the agent were rotated away by the kubelet before agentfarm read "
        "them; raise the kubelet's containerLogMaxSize if this happens often"
    )


class KubernetesHandle:
    def __init__(
        self, run_id: str, api: k8s_api.Api, state: RunState, *, delete_pod_now: bool = False,
        keeper: sessions.Keeper | None = None,
    ) -> None:  # fmt: skip
        self.run_id = run_id
        self._api = api
        self._state = state
        self._delete_pod_now = delete_pod_now
        #: Carries the agent's session out of the pod at the run's end (a later continue).
        self._keeper = keeper
        #: The entrypoint pushes the branch and says where it ended up in a notice.
        self.branch_outcome: BranchOutcome | None = None

    async def records(self, after: int) -> AsyncIterator[Record]:
        cursor = _Cursor()
        ns, name = self._state.namespace, self._state.name

        def keep(kind: RecordKind, at: int | None, data: bytes = b"") -> Record | None:
            return Record(at, kind, data) if at is not None and at > after else None

        pod = await self._api.get_pod(ns, name)
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
            pod = await self._next_state(pod)

        if view.agent_started:
            node = (pod.get("spec") or {}).get("nodeName")
            started = json.dumps({"pod": f"{ns}/{name}", "node": node}).encode()
            if record := keep("started", STARTED_SLOT, started):
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
        while True:
            quiet = False
            try:
                async for line in self._log(follow, since):
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
                    lost = range(max(cursor.line, after >> 8) + 1, seq)
                    if lost:
                        cursor.advance(seq - 1)
                        what = _rotated_notice(lost).encode()
                        if record := keep("notice", cursor.notice(), what):
                            yield record
                    at = cursor.advance(seq)
                    if kind == "notice" and data.startswith(BRANCH_NOTICE):
                        # Read on every pass (also before ``after``): finalize reports it.
                        self.branch_outcome = parse_branch(data) or self.branch_outcome
                        continue
                    if kind == "notice" and data.startswith(EXITED_NOTICE):
                        # The agent exited; the pod waits for resume or finish (finalize).
                        exited = parse_exited(data, stopping=self.stopping)
                        yield Record(cursor.exit(), "exit", exit=exited)
                        return
                    if at > after:
                        yield Record(at, kind, data)
            except _Quiet:
                quiet = True
            except k8s_api.ApiError as exc:
                if exc.status not in (400, 404, 500, 503):
                    raise
                log.info("log stream of %s/%s: %s", ns, name, exc)
            except RETRYABLE as exc:
                log.info("log stream of %s/%s broke: %r; reopening", ns, name, exc)
            if quiet:
                # Reopen from a little before the last line: a quiet agent costs a short read.
                since = None
                if last_line_at is not None:
                    since = math.ceil(loop.time() - last_line_at) + SINCE_MARGIN_SECONDS
                continue
            since = None
            exit_info = await self._wait_exit()
            if exit_info is not None and not follow:
                yield Record(cursor.exit(), "exit", exit=exit_info)
                return
            # Read once more without follow once the container has ended (drains lines a
            # broken stream missed); keep following while it still runs.
            follow = exit_info is None
            if follow:
                await asyncio.sleep(1.0)

    async def _log(self, follow: bool, since: int | None) -> AsyncIterator[bytes]:
        """The agent's log lines. A followed stream that brings nothing for
        QUIET_REOPEN_SECONDS ends with :class:`_Quiet`: the kubelet may be following a file
        it has rotated away, and only a new stream reads the new file."""
        ns, name = self._state.namespace, self._state.name
        stream = self._api.pod_log(
            ns, name, manifests.AGENT_CONTAINER, follow=follow, since_seconds=since
        )
        try:
            while True:
                try:
                    async with asyncio.timeout(QUIET_REOPEN_SECONDS if follow else None):
                        line = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _Quiet from None
                yield line
        finally:
            await stream.aclose()

    @property
    def stopping(self) -> bool:
        return self._state.stopping

    async def _next_state(self, pod: k8s_api.Json) -> k8s_api.Json | None:
        """The pod's next version (None once it is deleted)."""
        ns, name = self._state.namespace, self._state.name
        version = str((pod.get("metadata") or {}).get("resourceVersion", ""))
        try:
            async for kind, obj in self._api.watch_pod(ns, name, version, WATCH_SECONDS):
                if kind == "DELETED":
                    return None
                if kind in ("ADDED", "MODIFIED"):
                    return obj
        except k8s_api.ApiError as exc:
            if exc.status != 410:  # 410: our resourceVersion is too old; re-read below
                raise
        except RETRYABLE as exc:
            log.info("watch on %s/%s broke: %r", ns, name, exc)
            await asyncio.sleep(1.0)
        return await self._api.get_pod(ns, name)

    async def _wait_exit(self) -> ExitInfo | None:
        """The run's exit if the agent container has ended (waiting for the kubelet to say
        so for a little while after its log ended), else None."""
        ns, name = self._state.namespace, self._state.name
        pod = await self._api.get_pod(ns, name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXIT_REPORT_SECONDS
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
                    pod = await self._next_state(pod)
            except TimeoutError:
                pod = await self._api.get_pod(ns, name)

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
            async for line in self._log(False, None):
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
