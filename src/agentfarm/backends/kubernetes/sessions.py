"""A Kubernetes run's agent session, kept by the control plane so that the run can be
continued with a new prompt after its pod has gone (supervisor/continuing.py).

At the run's end, before the pod is told to finish, :meth:`Keeper.carry_out` execs
``entrypoint.py session-out`` in it: the session files under ~/.claude (Claude Code's
transcripts of the workspace's sessions) as one bundle, a JSON header line ``{"files":
[{"name", "size"}], "size": N}`` and N bytes of the files' contents, zlib-compressed. Those bytes
come from the agent's pod and are hostile: only session file names are taken, the sizes must
add up to at most :data:`LIMIT` bytes, and the data is decompressed with that bound, before
the bundle is kept as it came in the run's directory (``runs/<id>/agent-session.z``) beside a
note (``agent-session.json``: the files, whether the run's branch is on the remote, or why
nothing was kept). Nothing is unpacked on the control plane: a continued run's new pod gets
the bundle back through ``entrypoint.py session-in``, which checks the names again and writes
under its HOME only. A session that could not be carried out (the pod did not wait after its
agent, it was gone, the files are over the limit) is a 409 on continue, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentfarm.backends.base import BranchOutcome
from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.backends.kubernetes import manifests
from agentfarm.domain import errors

#: At most this many bytes of session files (uncompressed) are carried out of a pod.
LIMIT = 64 << 20
MAX_FILES = 4096
HEADER_LIMIT = 1 << 20
BUNDLE, NOTE = "agent-session.z", "agent-session.json"
OUT_ARGV = ["python3", manifests.ENTRYPOINT, "session-out"]
IN_ARGV = ["python3", manifests.ENTRYPOINT, "session-in"]
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: Claude Code's directory for the workspace's sessions, under ~/.claude: the workspace's
#: path with every character but letters and digits made ``-``.
PROJECT = "projects/" + re.sub(r"[^A-Za-z0-9]", "-", manifests.WORKSPACE)
NAME_RE = re.compile(
    rf"{re.escape(PROJECT)}/{_UUID}"
    r"(?:\.jsonl|/(?:subagents|tool-results)/[A-Za-z0-9][A-Za-z0-9._-]{0,127})"
)
CONTINUE_HINT = "launch a new run on its branch instead"


@dataclass(frozen=True)
class Bundle:
    files: tuple[tuple[str, int], ...]
    packed: bytes

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)

    def to_bytes(self) -> bytes:
        files = [{"name": name, "size": size} for name, size in self.files]
        header = json.dumps({"files": files, "size": len(self.packed)}).encode()
        return header + b"\n" + self.packed


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text[:300])


def parse(raw: bytes) -> Bundle:
    """A bundle from ``entrypoint.py session-out`` (hostile bytes), checked; ValueError with
    what is wrong (the pod's own reason, made printable, when it sent one)."""
    head, newline, packed = raw.partition(b"\n")
    if not newline or len(head) > HEADER_LIMIT:
        raise ValueError("the pod sent no bundle header")
    header = json.loads(head)
    if isinstance(header, dict) and isinstance(header.get("error"), str):
        raise ValueError(_printable(header["error"]))
    files = header.get("files") if isinstance(header, dict) else None
    size = header.get("size") if isinstance(header, dict) else None
    if not isinstance(files, list) or not isinstance(size, int) or len(files) > MAX_FILES:
        raise ValueError("the pod's bundle header is not what session-out writes")
    kept: list[tuple[str, int]] = []
    for item in files:
        name = item.get("name") if isinstance(item, dict) else None
        length = item.get("size") if isinstance(item, dict) else None
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValueError(f"the pod's bundle names an unexpected file {_printable(str(name))!r}")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ValueError("the pod's bundle gives a size that is not a count of bytes")
        kept.append((name, length))
    bundle = Bundle(tuple(kept), packed)
    if bundle.size > LIMIT:
        raise ValueError(f"the agent's session files are over {LIMIT >> 20} MiB")
    unpacker = zlib.decompressobj()
    try:
        data = unpacker.decompress(packed, bundle.size + 1)
    except zlib.error as exc:
        raise ValueError(f"the pod's bundle does not decompress ({exc})") from None
    if len(packed) != size or len(data) != bundle.size or unpacker.unconsumed_tail:
        raise ValueError("the pod's bundle is cut short or its sizes do not add up")
    return bundle


def why_missed(pod: k8s_api.Json | None, waits: bool) -> str:
    """Why a run's pod could not give its session at the run's end."""
    if not waits:
        return (
            "its pod did not wait after the agent (AGENTFARM_K8S_RESUME_WAIT_SECONDS is 0), so "
            "it pushed and exited with it"
        )
    if pod is None:
        return "its pod was gone before the run's end (deleted outside agentfarm)"
    return "its pod had ended before the run's end (its wait ran out, or it was stopped)"


class Keeper:
    """The kept sessions, one per run, in ``runs_dir/<run id>/``."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir

    def _path(self, run_id: str, name: str) -> Path:
        manifests.object_name(run_id)  # a run id that names nothing outside its directory
        return self.runs_dir / run_id / name

    # --- at the run's end ------------------------------------------------------------------
    async def carry_out(
        self, api: k8s_api.Api, namespace: str, pod: str, run_id: str
    ) -> str | None:
        """Carry the session out of the waiting ``pod`` and keep it; a notice saying so (None:
        the agent left no session there, an agent without one or a pod where it never ran)."""
        try:
            out, failure = await api.exec_pod(
                namespace, pod, manifests.AGENT_CONTAINER, OUT_ARGV, b"",
                limit=LIMIT + HEADER_LIMIT, seconds=120,
            )  # fmt: skip
            bundle = parse(out) if out else None
            if bundle is None:
                raise ValueError(failure or "the pod sent nothing")
        except (errors.BackendError, ValueError) as exc:
            reason = f"the agent's session could not be carried out of its pod: {exc}"
            await self._write_note(run_id, {"ok": False, "reason": reason})
            return f"{reason}; the run cannot be continued ({CONTINUE_HINT})"
        if not bundle.files:
            await self.missed(run_id, "its pod held no session files of the agent")
            return None
        await asyncio.to_thread(self._keep, run_id, bundle)
        return (
            f"kept the agent's session ({len(bundle.files)} file(s), "
            f"{(bundle.size + 1023) // 1024} KiB) to continue the run later"
        )

    def _keep(self, run_id: str, bundle: Bundle) -> None:
        _replace(self._path(run_id, BUNDLE), bundle.to_bytes())
        earlier = self._read_note(run_id)
        note = {
            "ok": True,
            "files": len(bundle.files),
            "bytes": bundle.size,
            "branch_pushed": bool(earlier.get("branch_pushed")),
        }
        _replace(self._path(run_id, NOTE), json.dumps(note).encode())

    async def missed(self, run_id: str, why: str) -> None:
        """The pod cannot give the session now (``why``). A session kept at an earlier end
        stays: no push happened since, so it still matches the branch."""
        if not (await asyncio.to_thread(self._read_note, run_id)).get("ok"):
            reason = f"the agent's session could not be carried out of its pod: {why}"
            await self._write_note(run_id, {"ok": False, "reason": reason})

    async def note_branch(self, run_id: str, outcome: BranchOutcome | None) -> None:
        """Once the pod pushed: whether the branch is on the remote now (a continued run's
        pod clones it then), and why a push failed."""
        note = await asyncio.to_thread(self._read_note, run_id)
        if not note.get("ok"):
            return
        pushed = outcome is not None and outcome.pushed
        note["branch_pushed"] = bool(note.get("branch_pushed")) or pushed
        note["push_error"] = outcome.error if outcome is not None else None
        await self._write_note(run_id, note)

    # --- on continue -----------------------------------------------------------------------
    async def refusal(self, run_id: str) -> str | None:
        """Why the run's session cannot be put back (None: it can)."""
        note = await asyncio.to_thread(self._read_note, run_id)
        if not note:
            return (
                "no session of its agent was kept (it ended before agentfarm kept pod "
                "sessions, or its agent never ran)"
            )
        if not note.get("ok"):
            return str(note.get("reason") or "its agent's session was not kept")
        if not await asyncio.to_thread(self._path(run_id, BUNDLE).is_file):
            return "its agent's kept session is missing from the control plane's data directory"
        return None

    async def load(self, run_id: str) -> tuple[Bundle, dict[str, Any]]:
        """The kept bundle (checked again) and its note; ConflictError saying why not."""
        if (why := await self.refusal(run_id)) is not None:
            raise errors.ConflictError(f"run {run_id} cannot be continued: {why}")
        raw = await asyncio.to_thread(self._path(run_id, BUNDLE).read_bytes)
        try:
            bundle = await asyncio.to_thread(parse, raw)
        except ValueError as exc:
            raise errors.ConflictError(
                f"run {run_id} cannot be continued: its kept session is damaged ({exc}); "
                f"{CONTINUE_HINT}"
            ) from None
        return bundle, await asyncio.to_thread(self._read_note, run_id)

    async def remove(self, run_id: str) -> None:
        def remove() -> None:
            for name in (BUNDLE, NOTE):
                with contextlib.suppress(FileNotFoundError):
                    self._path(run_id, name).unlink()
            with contextlib.suppress(OSError):  # not empty, or not there: leave it
                (self.runs_dir / run_id).rmdir()

        await asyncio.to_thread(remove)

    # --- the note --------------------------------------------------------------------------
    def _read_note(self, run_id: str) -> dict[str, Any]:
        try:
            note = json.loads(self._path(run_id, NOTE).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return note if isinstance(note, dict) else {}

    async def _write_note(self, run_id: str, note: dict[str, Any]) -> None:
        await asyncio.to_thread(_replace, self._path(run_id, NOTE), json.dumps(note).encode())


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a crash leaves the old file), readable
    by the server's user only: a transcript holds whatever the agent read."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)
