"""The kubernetes backend: launch, reattach and clean up one pod per run (its Secret holds the
run's credentials and first stdin bytes); a sweeper deletes finished pods after
``AGENTFARM_K8S_CLEANUP_AFTER_SECONDS``. Following a run is ``handle.py``'s job, with the
states of all pods from one watch per namespace (``watch.py``) and at most
``AGENTFARM_K8S_LOG_STREAMS`` logs followed at once (``slots.py``). An ended run continued with
a new prompt goes on in a new pod that gets its agent's session back (``sessions.py`` keeps it
at the run's end, ``continued.py`` has the steps)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import posixpath
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from agentfarm import tasks
from agentfarm.backends.base import LaunchInfo
from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.backends.kubernetes import (
    config,
    continued,
    handle,
    manifests,
    sessions,
    slots,
    watch,
)
from agentfarm.backends.kubernetes import status as k8s_status
from agentfarm.domain import backend_config, diffs, errors, launch, models
from agentfarm.domain.launch import GitAuth, LaunchSpec
from agentfarm.settings import Settings

log = logging.getLogger(__name__)


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, settings: Settings, api_client: Any | None = None) -> None:
        self.settings = settings
        self._api_client = api_client
        self._owns_client = api_client is None
        self._api: k8s_api.Api | None = None
        self._runs: dict[str, handle.RunState] = {}
        self._sweeper: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        self._watches: dict[str, watch.PodWatch] = {}
        self.log_slots = slots.LogSlots(settings.k8s_log_streams)
        self._keeper = sessions.Keeper(settings.runs_dir)

    async def _client(self) -> k8s_api.Api:
        async with self._lock:
            if self._api is None:
                if self._api_client is None:
                    self._api_client = await k8s_api.connect(
                        self.settings.k8s_kubeconfig, log_streams=self.settings.k8s_log_streams
                    )
                self._api = k8s_api.Api(self._api_client)
            if self._sweeper is None and self.settings.k8s_cleanup_after_seconds > 0:
                self._sweeper = tasks.spawn(
                    self._sweep_forever(), name="kubernetes pod sweeper", into=self._tasks
                )
            return self._api

    def pods(self, namespace: str) -> watch.PodWatch:
        """The shared watch of this control plane's pods in ``namespace`` (started on first
        use; needs the client)."""
        found = self._watches.get(namespace)
        if found is None:
            assert self._api is not None, "pods() before _client()"
            selector = manifests.instance_selector(self.settings.k8s_instance)
            found = self._watches[namespace] = watch.PodWatch(self._api, namespace, selector)
            found.start()
        return found

    def _handle(
        self, run_id: str, api: k8s_api.Api, state: handle.RunState
    ) -> handle.KubernetesHandle:
        return handle.KubernetesHandle(
            run_id, api, state, delete_pod_now=self._delete_now,
            pods=self.pods(state.namespace), log_slots=self.log_slots, keeper=self._keeper,
        )  # fmt: skip

    async def aclose(self) -> None:
        for pod_watch in self._watches.values():
            await pod_watch.aclose()
        self._watches.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._owns_client and self._api_client is not None:
            await self._api_client.close()
        self._api_client = None
        self._api = None

    @property
    def _delete_now(self) -> bool:
        return self.settings.k8s_cleanup_after_seconds <= 0

    def _namespace(self, run: models.Run) -> str:
        k8s = run.spec.backend
        namespace = k8s.namespace if isinstance(k8s, backend_config.KubernetesSpec) else None
        return namespace or self.settings.k8s_namespace

    async def launch(
        self, run: models.Run, spec: launch.LaunchSpec
    ) -> tuple[handle.KubernetesHandle, LaunchInfo]:
        if not run.spec.repo.startswith(("https://", "http://", "git://")):
            raise errors.LaunchError(
                f"the kubernetes backend clones inside the pod: {run.spec.repo!r} must be an "
                "https:// (or git://) URL the cluster can reach"
            )
        return await self._create(run, spec, config.resolve(run.spec, self.settings))

    async def _create(
        self, run: models.Run, spec: LaunchSpec, cfg: config.PodConfig
    ) -> tuple[handle.KubernetesHandle, LaunchInfo]:
        api = await self._client()
        name = manifests.object_name(run.id)
        secret = manifests.build_secret(run, spec, cfg)
        pod_body = manifests.build_pod(run, spec, cfg)
        try:
            await api.create_secret(cfg.namespace, secret)
        except k8s_api.ApiError as exc:
            raise errors.LaunchError(f"cannot create the run's Secret: {exc.message}") from exc
        try:
            pod = await api.create_pod(cfg.namespace, pod_body)
        except BaseException as exc:
            await _quietly(api.delete_secret(cfg.namespace, name))
            if isinstance(exc, k8s_api.ApiError):
                raise errors.LaunchError(
                    f"the cluster refused the agent's pod: {exc.message}"
                ) from exc
            raise
        try:
            owner = {"metadata": {"ownerReferences": [manifests.owner_reference(pod)]}}
            await api.patch_secret(cfg.namespace, name, owner)
        except k8s_api.ApiError as exc:  # cleanup() still deletes it
            log.warning("cannot make pod %s own its Secret: %s", name, exc)
        self.pods(cfg.namespace).remember(pod)  # its first state, without a GET
        state = self._runs[run.id] = handle.RunState(cfg.namespace, name)
        state.waits = cfg.resume_wait > 0
        info = LaunchInfo(
            branch=spec.branch,
            workspace=f"pod {cfg.namespace}/{name}:{manifests.WORKSPACE}",
            notices=[f"created pod {cfg.namespace}/{name} (image {cfg.image})"],
        )
        return self._handle(run.id, api, state), info

    async def attach(
        self, run: models.Run, *, git_auth: GitAuth | None = None
    ) -> tuple[handle.KubernetesHandle, LaunchInfo]:
        """The pod pushes its branch itself (with the token from the run's Secret)."""
        api = await self._client()
        state = self._runs.get(run.id)
        if state is None:
            namespace = self._namespace(run)
            name = manifests.object_name(run.id)
            found = await api.list_pods(
                namespace, manifests.run_selector(run.id, self.settings.k8s_instance)
            )
            items = found.get("items") or []
            if items:
                name = items[0]["metadata"]["name"]
            state = self._runs[run.id] = handle.RunState(namespace, name)
            if items:
                state.waits = manifests.resume_wait(items[0]) > 0
            state.base = await _seq_base(api, namespace, name)
        info = LaunchInfo(
            branch=run.branch or launch.branch_name(run.id),
            workspace=f"pod {state.namespace}/{state.name}:{manifests.WORKSPACE}",
        )
        return self._handle(run.id, api, state), info

    async def resume(
        self, run: models.Run, spec: LaunchSpec
    ) -> tuple[handle.KubernetesHandle, LaunchInfo]:
        """The run's next agent process, in its pod (same workspace, HOME and branch): the
        pod waits after its agent exits (AGENTFARM_RESUME_WAIT) for this ``resume``. Its log
        lines continue the pod's numbering; the cursor counts from the last one before them
        (kept on the run's Secret, for a reattach after a restart)."""
        previous, _ = await self.attach(run)
        api = await self._client()
        state = self._runs[run.id]
        where = f"pod {state.namespace}/{state.name}"
        pod = await api.get_pod(state.namespace, state.name)
        if pod is None or not k8s_status.agent_running(pod) or not state.waits:
            raise errors.ConflictError(
                f"run {run.id} cannot go on in its {where}: the pod has ended (it waits "
                f"AGENTFARM_K8S_RESUME_WAIT_SECONDS after its agent, then pushes and exits) or "
                "was deleted, and the agent's session lived in it; launch a new run instead"
            )
        command = spec.command
        argv = command.with_program(posixpath.basename(command.argv[0])) if command.argv else []
        request: dict[str, object] = {
            "op": "resume",
            "argv": argv,
            "stdin": base64.b64encode(command.stdin).decode(),
        }
        reply = await previous.control(request)
        base = reply.get("seq")
        if not isinstance(base, int) or isinstance(base, bool) or base < 0:
            raise errors.BackendError(f"the agent's {where} gave no line number on resume")
        annotations = {"metadata": {"annotations": {manifests.SEQ_BASE_ANNOTATION: str(base)}}}
        try:
            await api.patch_secret(state.namespace, state.name, annotations)
        except k8s_api.ApiError as exc:  # only a reattach after a restart needs it
            log.warning("run %s: cannot note where its resumed log starts: %s", run.id, exc)
        state.base, state.stopping = base, False
        info = LaunchInfo(
            branch=spec.branch,
            workspace=f"{where}:{manifests.WORKSPACE}",
            notices=[f"resumed the agent in its {where}"],
        )
        return self._handle(run.id, api, state), info

    async def continue_refusal(self, run: models.Run) -> str | None:
        """Why an ended run cannot be continued (None: it can)."""
        if self.settings.k8s_resume_wait_seconds <= 0:
            return (
                "AGENTFARM_K8S_RESUME_WAIT_SECONDS is 0: a pod does not wait after its agent, "
                f"so the agent's session is not kept; {sessions.CONTINUE_HINT}"
            )
        why = await self._keeper.refusal(run.id)
        return f"{why}; {sessions.CONTINUE_HINT}" if why else None

    async def continue_ended(
        self, run: models.Run, spec: LaunchSpec
    ) -> tuple[handle.KubernetesHandle, LaunchInfo]:
        """An ended run, continued with a new prompt: its pod has gone, so a new pod on its
        branch (cloned from the remote when the run pushed it, else made again from the
        base, as at its launch) gets the agent's session back (kept at the run's end) and
        resumes it with ``spec``'s command as a parked run resumes in its pod; at its end the
        branch is pushed on top."""
        bundle, note = await self._keeper.load(run.id)
        cfg = config.resolve(run.spec, self.settings)
        if (why := await self.continue_refusal(run)) is not None:
            raise errors.ConflictError(f"run {run.id} cannot be continued: {why}")
        api = await self._client()
        name = manifests.object_name(run.id)
        await continued.clear(api, cfg.namespace, name)
        on_remote = bool(note.get("branch_pushed")) or run.spec.base_branch == spec.branch
        pod_run = run
        if on_remote:
            pod_run = run.model_copy(
                update={"spec": run.spec.model_copy(update={"base_branch": spec.branch})}
            )
        idle = dataclasses.replace(spec.command, argv=continued.IDLE_ARGV, runner=(), stdin=b"")
        _, info = await self._create(pod_run, dataclasses.replace(spec, command=idle), cfg)
        try:
            await continued.wait_idle(api, cfg.namespace, name)
            files = await continued.put_back(api, cfg.namespace, name, bundle)
            resumed, _ = await self.resume(run, spec)
        except BaseException:
            # Nothing ran: the run's end finds no pod and keeps the session it had.
            await _quietly(api.delete_pod(cfg.namespace, name, grace_seconds=0))
            await _quietly(api.delete_secret(cfg.namespace, name))
            self._runs.pop(run.id, None)
            raise
        base = run.spec.base_branch or "the default branch"
        where = "its branch" if on_remote else f"its branch made again from {base} (none pushed)"
        info.notices.append(
            f"continued the run in a new pod {cfg.namespace}/{name} on {where}, the agent's "
            f"session put back ({files} file(s))"
        )
        if note.get("push_error"):
            info.notices.append(
                "the run's last push was refused, so its last commits are not on the branch: "
                f"{note['push_error']}"
            )
        return resumed, info

    async def diff(self, run: models.Run, *, limit: int) -> diffs.RunDiff:
        raise errors.ConflictError(
            f"run {run.id} ran in a Kubernetes pod, whose workspace the control plane cannot "
            f"read: see its branch {run.branch or ''} in the repository (or its pull request)"
        )

    async def cleanup(self, run: models.Run) -> None:
        """Delete the run's Secret now (it marks the run as done with) and its pod now or,
        with AGENTFARM_K8S_CLEANUP_AFTER_SECONDS, by the sweeper once that time has passed."""
        api = await self._client()
        state = self._runs.pop(run.id, None)
        namespace = state.namespace if state else self._namespace(run)
        name = state.name if state else manifests.object_name(run.id)
        await api.delete_secret(namespace, name)
        if self.settings.k8s_cleanup_after_seconds <= 0:
            await api.delete_pod(namespace, name, grace_seconds=1)
        await self._keeper.remove(run.id)

    async def sweep(self, now: datetime | None = None) -> list[str]:
        """Delete finished pods of this control plane that ended more than the cleanup time
        ago and whose run is done with (its Secret removed by :meth:`cleanup`)."""
        api = await self._client()
        now = now or datetime.now(UTC)
        namespace = self.settings.k8s_namespace
        pods = await api.list_pods(
            namespace, manifests.instance_selector(self.settings.k8s_instance)
        )
        deleted: list[str] = []
        for pod in pods.get("items") or []:
            name = pod["metadata"]["name"]
            ended = _finished_at(pod)
            if (
                ended is None
                or (now - ended).total_seconds() < self.settings.k8s_cleanup_after_seconds
            ):
                continue
            if await _secret_exists(api, namespace, name):
                continue  # not finalized yet: its run still needs the log
            await api.delete_pod(namespace, name, grace_seconds=1)
            deleted.append(name)
        return deleted

    async def _sweep_forever(self) -> None:
        interval = min(300.0, max(5.0, self.settings.k8s_cleanup_after_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except (errors.AgentfarmError, *handle.RETRYABLE) as exc:
                log.warning("sweeping finished agent pods failed: %s", exc)


def _finished_at(pod: k8s_api.Json) -> datetime | None:
    st = pod.get("status") or {}
    if st.get("phase") not in ("Succeeded", "Failed"):
        return None
    times = [
        (cs.get("state") or {}).get("terminated", {}).get("finishedAt")
        for cs in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or [])
    ]
    stamps = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in times if t]
    if not stamps:
        start = st.get("startTime") or (pod.get("metadata") or {}).get("creationTimestamp")
        return datetime.fromisoformat(start.replace("Z", "+00:00")) if start else None
    return max(stamps)


async def _secret_exists(api: k8s_api.Api, namespace: str, name: str) -> bool:
    try:
        await api._call(api.core.read_namespaced_secret(name, namespace, _preload_content=False))
    except k8s_api.ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def _seq_base(api: k8s_api.Api, namespace: str, name: str) -> int:
    """Where the log of the run's current agent process starts (0: its first process)."""
    secret = await api.get_secret(namespace, name)
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(manifests.SEQ_BASE_ANNOTATION, "0")
    return int(value) if isinstance(value, str) and value.isdigit() else 0


async def _quietly(pending: Coroutine[Any, Any, None]) -> None:
    try:
        await pending
    except (errors.AgentfarmError, *handle.RETRYABLE) as exc:
        log.warning("cleanup after a failed launch: %s", exc)
