"""What a run changed: its branch against the commit it started from."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

#: The patch is cut after this many bytes (``truncated`` says so), the file list after this
#: many files: a run that rewrote a vendored tree must not make its page unusable.
PATCH_LIMIT = 512 * 1024
FILES_LIMIT = 2000

FileStatus = Literal["added", "modified", "deleted", "renamed", "copied", "type_changed", "other"]
_STATUS: dict[str, FileStatus] = {
    "A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied",
    "T": "type_changed",
}  # fmt: skip


def file_status(letter: str) -> FileStatus:
    """git's one-letter status (``R100`` has a score after it)."""
    return _STATUS.get(letter[:1], "other")


class FileChange(BaseModel):
    #: As git names it; untrusted text (the agent chose it): escape it wherever it is shown.
    path: str
    old_path: str | None = Field(None, description="The path before a rename or copy.")
    status: FileStatus
    additions: int = 0
    deletions: int = 0
    binary: bool = False


class RunDiff(BaseModel):
    base: str = Field(..., description="The commit the run started from.")
    base_branch: str | None = Field(None, description="The branch that commit was on.")
    branch: str
    files: list[FileChange]
    files_truncated: bool = False
    additions: int
    deletions: int
    patch: str = Field(..., description="The unified diff, cut at the limit.")
    truncated: bool = Field(False, description="The patch was cut at the limit.")
    limit: int = PATCH_LIMIT
