"""The states of the run pods, from one watch per namespace for the whole backend.

A handle needs its pod's state while the pod starts (notices, ``started``) and when its log
ends (the exit). One watch per pod would cost a request per state change and a watch per pod
at the API server; :class:`PodWatch` lists the control plane's pods once (its instance's label
selector) and follows them with a single watch, renewed from the last resourceVersion (with
bookmarks, so a renewal never has to go far back), listed again when the server answers 410,
and reconnected with backoff when the API server goes away. Handles read the cache and wait
for their pod's next version; a pod the watch has not seen yet is read with one GET.

:class:`DirectPods` is the same interface over plain calls (one GET, one watch per change),
for a handle made without a backend (unit tests).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from typing import Any, Protocol

import aiohttp

from agentfarm import tasks
from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.domain import errors

log = logging.getLogger(__name__)

Json = k8s_api.Json
#: How long a watch lasts before the server ends it and it is renewed.
WATCH_SECONDS = 300
#: A handle waiting for its pod's next state looks again (cache, else a GET) this often, so
#: that a watch gone wrong cannot hold a run forever.
RECHECK_SECONDS = 60.0
#: Errors worth trying again: the connection broke, or the API server is (re)starting.
RETRYABLE = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
TEMPORARY_STATUS = frozenset({429, 500, 502, 503, 504})
#: How long the API server may stay unreachable before a single read gives up.
OUTAGE_SECONDS = 300.0
#: How long closing waits for a request in flight to be answered before cancelling it.
CLOSE_WAIT_SECONDS = 2.0
#: Names of deleted pods remembered, so a late waiter learns its pod is gone.
GONE_KEPT = 10_000
#: A kube-apiserver that has just started answers before its RBAC cache holds every Role and
#: refuses what it will allow a moment later: a refusal is believed after this long.
DENIED_GRACE_SECONDS = 60.0
DENIED_STATUS = frozenset({401, 403})
#: After a lasting refusal, how long the watch waits before it asks again.
REFUSED_PAUSE_SECONDS = 30.0


class Denials:
    """Whether a refusal (401, 403) is still within DENIED_GRACE_SECONDS of the first one."""

    def __init__(self) -> None:
        self._since: float | None = None

    def clear(self) -> None:
        self._since = None

    def excused(self, exc: BaseException) -> bool:
        if not isinstance(exc, k8s_api.ApiError) or exc.status not in DENIED_STATUS:
            return False
        now = asyncio.get_running_loop().time()
        if self._since is None:
            self._since = now
        return now - self._since < DENIED_GRACE_SECONDS


def temporary(exc: BaseException) -> bool:
    """The API server is unreachable or busy: worth trying again after a pause."""
    if isinstance(exc, k8s_api.ApiError):
        return exc.status in TEMPORARY_STATUS
    return isinstance(exc, RETRYABLE)


class Backoff:
    """Exponential pauses with jitter: 0.25 s doubling up to ``cap``."""

    def __init__(self, first: float = 0.25, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self.next = first

    def reset(self) -> None:
        self.next = self.first

    async def sleep(self) -> None:
        await asyncio.sleep(self.next * random.uniform(0.8, 1.2))  # noqa: S311 (jitter)
        self.next = min(self.cap, self.next * 2)


def newer(pod: Json, version: str) -> bool:
    """``pod`` is a later version than ``version`` (resourceVersions are etcd revisions,
    compared as numbers when they are; otherwise any other version is taken as newer)."""
    mine = str((pod.get("metadata") or {}).get("resourceVersion", ""))
    if mine.isdigit() and version.isdigit():
        return int(mine) > int(version)
    return mine != version


def version_of(pod: Json) -> str:
    return str((pod.get("metadata") or {}).get("resourceVersion", ""))


async def read_pod(api: k8s_api.Api, namespace: str, name: str) -> Json | None:
    """One GET of the pod (None: it does not exist), tried again while the API server is
    unreachable or busy, for up to OUTAGE_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OUTAGE_SECONDS
    backoff = Backoff()
    denials = Denials()
    while True:
        try:
            return await api.get_pod(namespace, name)
        except (k8s_api.ApiError, *RETRYABLE) as exc:
            if not temporary(exc) and not denials.excused(exc):
                raise
            if loop.time() > deadline:
                raise errors.BackendError(
                    f"cannot read pod {namespace}/{name}: the Kubernetes API server has not "
                    f"answered for {OUTAGE_SECONDS:.0f} s ({exc!r}); check that it runs and "
                    "that the control plane reaches it"
                ) from exc
            log.info("reading pod %s/%s: %r; trying again", namespace, name, exc)
            await backoff.sleep()


class PodSource(Protocol):
    async def get(self, name: str) -> Json | None: ...

    async def next_state(self, pod: Json) -> Json | None: ...


class DirectPods:
    """Each read a GET, each wait a watch of the one pod."""

    def __init__(self, api: k8s_api.Api, namespace: str) -> None:
        self._api = api
        self._namespace = namespace

    async def get(self, name: str) -> Json | None:
        return await read_pod(self._api, self._namespace, name)

    async def next_state(self, pod: Json) -> Json | None:
        """The pod's next version (None once it is deleted)."""
        name = str((pod.get("metadata") or {}).get("name", ""))
        try:
            async with asyncio.timeout(RECHECK_SECONDS):
                async for kind, obj in self._api.watch_pod(
                    self._namespace, name, version_of(pod), int(RECHECK_SECONDS)
                ):
                    if kind == "DELETED":
                        return None
                    if kind in ("ADDED", "MODIFIED"):
                        return obj
        except k8s_api.ApiError as exc:
            if exc.status != 410 and not temporary(exc):
                raise  # 410: our resourceVersion is too old; read it again below
        except RETRYABLE as exc:
            log.info("watch on %s/%s broke: %r", self._namespace, name, exc)
            await asyncio.sleep(1.0)
        return await self.get(name)


class PodWatch:
    """The pods of one namespace matching ``selector``, kept current by one watch."""

    def __init__(self, api: k8s_api.Api, namespace: str, selector: str) -> None:
        self._api = api
        self.namespace = namespace
        self._selector = selector
        self._pods: dict[str, Json] = {}
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._waiters: dict[str, asyncio.Event] = {}
        self._synced = False
        self._tasks: set[asyncio.Task[object]] = set()
        self._task: asyncio.Task[object] | None = None
        #: Watches opened and lists made (the benchmark and the tests read them).
        self.watches = 0
        self.lists = 0
        #: Set while no request is waiting for its answer (see aclose).
        self._answered = asyncio.Event()
        self._answered.set()
        self._response: Any = None

    def start(self) -> None:
        if self._task is None:
            name = f"watch of the agent pods in {self.namespace}"
            self._task = tasks.spawn(self._follow(), name=name, into=self._tasks)

    async def aclose(self) -> None:
        # A request cancelled while its TLS connection is being made can leave its socket
        # behind: let one in flight be answered first (a watch then stops cleanly).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_SECONDS):
                await self._answered.wait()
        # Abort the open watch rather than close it: a TLS close waits for the server's
        # answer, which a loop about to stop never reads, and the socket is left behind.
        k8s_api.abort(self._response)
        await tasks.stop(list(self._tasks))
        self._task = None

    async def get(self, name: str) -> Json | None:
        """The pod as last seen (None: it does not exist); a pod the watch has not seen yet
        (it was created a moment ago, or the watch is catching up) is read with a GET."""
        if name in self._pods:
            return self._pods[name]
        if self._synced and name in self._gone:
            return None
        pod = await read_pod(self._api, self.namespace, name)
        if pod is not None:
            self._store(pod)
        return self._pods.get(name, pod)

    def remember(self, pod: Json) -> None:
        """A pod as the API server just returned it (created): the watch may lag behind."""
        self._store(pod)

    async def next_state(self, pod: Json) -> Json | None:
        """The pod's next version (None once it is deleted). Looks again after
        RECHECK_SECONDS even without news: the caller then sees the same state again."""
        name = str((pod.get("metadata") or {}).get("name", ""))
        version = version_of(pod)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECHECK_SECONDS
        while True:
            current = self._pods.get(name)
            if current is not None and newer(current, version):
                return current
            if name in self._gone and current is None:
                return None
            event = self._waiters.setdefault(name, asyncio.Event())
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await event.wait()
            except TimeoutError:
                # Read it, not the cache: the watch may be failing (a Role without list).
                fresh = await read_pod(self._api, self.namespace, name)
                if fresh is None:
                    return None
                self._store(fresh)
                return self._pods.get(name, fresh)

    # -- the watch -----------------------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = Backoff()
        denials = Denials()
        version = ""
        while True:
            try:
                if not version:
                    self._answered.clear()
                    version = await self._list()
                self.watches += 1
                self._answered.clear()
                async for kind, obj in self._api.watch_pods(
                    self.namespace, self._selector, version, WATCH_SECONDS, self._opened
                ):
                    backoff.reset()
                    denials.clear()
                    version = version_of(obj) or version
                    if kind == "DELETED":
                        self._delete(str((obj.get("metadata") or {}).get("name", "")))
                    elif kind in ("ADDED", "MODIFIED"):
                        self._store(obj)
            except k8s_api.ApiError as exc:
                self._answered.set()
                if exc.status == 410:
                    version = ""  # too old: list again, at once
                    continue
                if temporary(exc) or denials.excused(exc):
                    log.info("watching the agent pods in %s: %s", self.namespace, exc)
                    await backoff.sleep()
                else:
                    log.warning(
                        "cannot list and watch the agent pods in %s (%s): runs see their pods' "
                        "states late; give the control plane's ServiceAccount list and watch "
                        "on pods there (deploy/k8s/base/rbac.yaml)", self.namespace, exc,
                    )  # fmt: skip
                    await asyncio.sleep(REFUSED_PAUSE_SECONDS)
            except (*RETRYABLE, ValueError) as exc:  # ValueError: a torn or garbled event
                self._answered.set()
                log.info("the watch of the agent pods in %s broke: %r", self.namespace, exc)
                await backoff.sleep()

    def _opened(self, response: Any) -> None:
        self._response = response
        self._answered.set()

    async def _list(self) -> str:
        self.lists += 1
        listed = await self._api.list_pods(self.namespace, self._selector)
        pods = {
            str(p["metadata"]["name"]): p for p in listed.get("items") or [] if p.get("metadata")
        }
        for name in set(self._pods) - set(pods):
            self._delete(name)
        for pod in pods.values():
            self._store(pod)
        self._synced = True
        self._answered.set()
        return str((listed.get("metadata") or {}).get("resourceVersion", ""))

    def _store(self, pod: Json) -> None:
        name = str(pod["metadata"]["name"])
        known = self._pods.get(name)
        if known is not None and not newer(pod, version_of(known)):
            return
        self._pods[name] = pod
        self._gone.pop(name, None)
        self._wake(name)

    def _delete(self, name: str) -> None:
        self._pods.pop(name, None)
        self._gone[name] = None
        while len(self._gone) > GONE_KEPT:
            self._gone.popitem(last=False)
        self._wake(name)

    def _wake(self, name: str) -> None:
        if event := self._waiters.pop(name, None):
            event.set()
