"""The agent container's log lines as the entrypoint writes them (deploy/agent/entrypoint.py):
``\\x1e<kind><seq> <payload>``, and the notices that carry data for the control plane."""

from __future__ import annotations

import dataclasses
import json

from agentfarm.backends.base import BranchOutcome, ExitInfo, RecordKind

#: The entrypoint's notice saying where the branch ended up (deploy/agent/entrypoint.py,
#: BRANCH_RECORD): it becomes the run's ``run.branch`` event, not a notice.
BRANCH_NOTICE = b"agentfarm.branch "
#: The entrypoint's notice saying the agent exited and the pod waits for ``resume`` or
#: ``finish`` (EXITED_RECORD): the run's exit record.
EXITED_NOTICE = b"agentfarm.exited "
#: The entrypoint's notice saying the clone before the agent failed (CLONE_FAILED_RECORD):
#: a notice for people and the run's error.
CLONE_FAILED_NOTICE = b"agentfarm.clone-failed "
STARTED_SLOT = 254
EXIT_SLOT = 255
_KINDS: dict[int, RecordKind] = {ord("O"): "stdout", ord("E"): "stderr", ord("N"): "notice"}


def parse_line(line: bytes) -> tuple[int | None, RecordKind, bytes]:
    """A log line as (sequence number, kind, payload), the way the entrypoint wrote it. A line
    without a sequence number (an older image, or the runtime's own words) has ``None``."""
    if len(line) >= 2 and line[0] == 0x1E and line[1] in _KINDS:
        kind = _KINDS[line[1]]
        digits, space, payload = line[2:].partition(b" ")
        if space and digits.isdigit():
            return int(digits), kind, payload
        if not digits and line[2:3] == b" ":
            return None, kind, line[3:]
    return None, "stdout", line


def parse_branch(line: bytes) -> BranchOutcome | None:
    """The entrypoint's ``agentfarm.branch {json}`` notice; None if it is not well formed."""
    try:
        data = json.loads(line[len(BRANCH_NOTICE) :])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    branch, start, head = data.get("branch"), data.get("start"), data.get("head")
    commits, pushed, error = data.get("commits"), data.get("pushed"), data.get("error")
    if not (isinstance(branch, str) and isinstance(start, str) and isinstance(pushed, bool)):
        return None
    if not isinstance(commits, int) or isinstance(commits, bool) or commits < 0:
        return None
    if not (head is None or isinstance(head, str)) or not (error is None or isinstance(error, str)):
        return None
    return BranchOutcome(branch, start, head, commits, pushed, error)


def parse_exited(line: bytes, *, stopping: bool) -> ExitInfo:
    """The entrypoint's ``agentfarm.exited {"code": N}`` notice as the run's exit."""
    try:
        data = json.loads(line[len(EXITED_NOTICE) :])
    except ValueError:
        data = None
    code = data.get("code") if isinstance(data, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        return ExitInfo(exit_code=None, error="the agent exited without saying its exit code")
    signal = code - 128 if 128 < code <= 128 + 64 else None
    return ExitInfo(exit_code=code, signal=signal, stopped=stopping)


class Cursor:
    """Cursors of a run's records: ``seq << 8 | slot`` (see handle.py)."""

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


def rotated_notice(lost: range) -> str:
    lines = f"line {lost.start}" if len(lost) == 1 else f"lines {lost.start}-{lost[-1]}"
    return (
        f"log {lines} of the agent were rotated away by the kubelet before agentfarm read "
        "them; raise the kubelet's containerLogMaxSize if this happens often"
    )


def clone_failed(line: bytes) -> str | None:
    """The sentence for the entrypoint's ``agentfarm.clone-failed {"error": ...}`` notice
    (git's words, masked there), or None for any other line."""
    if not line.startswith(CLONE_FAILED_NOTICE):
        return None
    try:
        data = json.loads(line[len(CLONE_FAILED_NOTICE) :])
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, str) or not error.strip():
        error = "git gave no reason"
    return f"cloning the repository failed: {error[:2000]}"


def with_error(info: ExitInfo, error: str | None) -> ExitInfo:
    """``info`` with ``error`` (a failed clone's) unless it has one or the run was stopped."""
    if error is None or info.error is not None or info.stopped:
        return info
    return dataclasses.replace(info, error=error)
