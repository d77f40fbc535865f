"""An ended run's files: its changes (the diff of its branch) and their deletion."""

from __future__ import annotations

from collections.abc import Mapping, Set

from agentfarm.backends.base import Backend
from agentfarm.domain import diffs, errors
from agentfarm.store import Store
from agentfarm.supervisor.hub import Hub


class RunFiles:
    """``active`` is the dispatcher's live set of runs it owns (not a copy)."""

    def __init__(
        self, store: Store, backends: Mapping[str, Backend], hub: Hub, active: Set[str]
    ) -> None:
        self._store = store
        self._backends = backends
        self._hub = hub
        self._active = active

    async def delete(self, run_id: str) -> None:
        """Delete an ended run: its files (through its backend's cleanup), then its row and
        events. A run not yet ended is a conflict: stop it first."""
        run = await self._store.get_run(run_id)
        if not run.status.terminal or run_id in self._active:
            raise errors.ConflictError(
                f"run {run_id} is {run.status.value}: stop it first (`agentfarm stop {run_id}`), "
                "then delete it once it has ended"
            )
        backend = self._backends.get(run.spec.backend.type)
        if backend is not None:
            # Files first: if this fails the run is still listed and can be deleted again.
            await backend.cleanup(run)
        await self._store.delete_run(run_id)
        self._hub.forget(run_id)
        self._hub.runs.deleted(run_id)

    async def diff(self, run_id: str, *, limit: int = diffs.PATCH_LIMIT) -> diffs.RunDiff:
        """An ended run's changes, from its backend. Not while it runs: the agent still
        writes its workspace, and host git runs there only after the agent has exited."""
        run = await self._store.get_run(run_id)
        if not run.status.terminal or run_id in self._active:
            raise errors.ConflictError(
                f"run {run_id} is {run.status.value}: its changes are shown once it has ended"
            )
        backend = self._backends.get(run.spec.backend.type)
        if backend is None:
            raise errors.ConfigurationError(
                f"the {run.spec.backend.type!r} backend of run {run_id} is not enabled here"
            )
        return await backend.diff(run, limit=limit)
