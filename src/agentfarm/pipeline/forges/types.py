"""What the pipeline sees of a forge: plain values and one client interface.

The differences between GitHub and Forgejo/Gitea (auth scheme, label ids, drafts, how a label's
author is found, check runs) live in the clients; everything here is the same for every kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

ForgeKind = Literal["github", "forgejo", "gitea"]

#: The combined verdict of a commit's checks. ``none``: nothing reported yet.
CheckState = Literal["success", "failure", "pending", "none"]


@dataclass(frozen=True)
class Repository:
    full_name: str
    #: The branch pull requests go to when nothing else is said.
    default_branch: str


@dataclass(frozen=True)
class Issue:
    number: int
    title: str
    body: str
    state: str
    labels: tuple[str, ...]
    author: str
    url: str


@dataclass(frozen=True)
class Comment:
    id: int
    body: str
    author: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    title: str
    head: str
    head_sha: str
    base: str
    draft: bool


@dataclass(frozen=True)
class Check:
    """One commit status (``context``) or GitHub check run (its name)."""

    name: str
    state: CheckState
    url: str
    description: str


@dataclass(frozen=True)
class CombinedStatus:
    sha: str
    state: CheckState
    checks: tuple[Check, ...]

    @property
    def failing(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if check.state == "failure")


class ForgeClient(Protocol):
    """One forge account acting on repositories named ``owner/name``."""

    kind: ForgeKind

    async def list_labeled_issues(self, repo: str, label: str) -> list[Issue]:
        """Open issues (never pull requests) carrying ``label``; conditional where supported."""
        ...

    async def get_repo(self, repo: str) -> Repository: ...

    async def branch_exists(self, repo: str, branch: str) -> bool: ...

    async def get_issue(self, repo: str, number: int) -> Issue: ...

    async def list_comments(self, repo: str, number: int) -> list[Comment]: ...

    async def create_comment(self, repo: str, number: int, body: str) -> Comment: ...

    async def edit_comment(self, repo: str, comment_id: int, body: str) -> Comment: ...

    async def add_labels(self, repo: str, number: int, names: Sequence[str]) -> None: ...

    async def remove_label(self, repo: str, number: int, name: str) -> None:
        """Idempotent: a label the issue does not carry is not an error."""
        ...

    async def find_open_pull(self, repo: str, head: str) -> PullRequest | None:
        """The open pull request from branch ``head`` of the same repository, if any."""
        ...

    async def open_pull(
        self, repo: str, *, title: str, head: str, base: str, body: str, draft: bool
    ) -> PullRequest: ...

    async def label_applied_by(self, repo: str, number: int, label: str) -> str | None:
        """The login that most recently applied ``label`` to the issue, or None."""
        ...

    async def may_write(self, repo: str, user: str) -> bool:
        """Whether ``user`` can push to ``repo``. Fail closed: an unknown user or an unknown
        permission is False, and a forge that cannot answer raises; never True by default."""
        ...

    async def combined_status(self, repo: str, ref: str) -> CombinedStatus: ...

    async def aclose(self) -> None: ...
