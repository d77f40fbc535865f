"""The AFK pipeline's nouns: a forge it watches and the attempts it makes on issues.

A :class:`Forge` is one account on one forge (GitHub, GitHub Enterprise, Forgejo, Gitea) with
the repositories it may act on. An :class:`Attempt` is one try at one issue (or one follow-up on
its pull request): it is stored before every side effect it causes, so that a restart resumes
it where it stopped and never repeats a push, a pull request or a comment.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from agentfarm.domain import backend_config, gittokens
from agentfarm.domain.models import new_id, utcnow

ForgeKind = Literal["github", "forgejo", "gitea"]
#: ``owner/name`` as both forges spell a repository.
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
#: Names of stored secrets (as ``store.secrets``).
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: A label name: printable, no control characters, as forges allow.
LABEL_RE = re.compile(r"^[^\x00-\x1f\x7f,]{1,50}$")
#: ``@name`` that starts a follow-up when a pull-request comment mentions it.
MENTION_RE = re.compile(r"^@[A-Za-z0-9][A-Za-z0-9_-]{0,38}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


Label = Annotated[str, Field(pattern=LABEL_RE.pattern)]


class StateLabels(_Strict):
    """Labels the pipeline puts on an issue to show where its attempt stands."""

    in_progress: Label = "agentfarm:in-progress"
    done: Label = "agentfarm:done"
    failed: Label = "agentfarm:failed"


class ForgeSettings(_Strict):
    """Everything about a forge except its identity and its secrets (editable in place)."""

    kind: ForgeKind = Field(
        ..., description="`github` (also GitHub Enterprise), `forgejo` or `gitea`."
    )
    base_url: str = Field(
        ...,
        max_length=2048,
        description="The REST API's root: `https://api.github.com`, `https://HOST/api/v3` "
        "(GitHub Enterprise) or `https://HOST/api/v1` (Forgejo/Gitea).",
    )
    token_secret: str = Field(
        ...,
        pattern=SECRET_NAME_RE.pattern,
        description="Name of the stored secret holding the forge token (API, clone, push).",
    )
    label: Label = Field("agentfarm", description="The label that hands an issue to an agent.")
    repos: list[Annotated[str, Field(pattern=REPO_RE.pattern)]] = Field(
        ...,
        min_length=1,
        max_length=500,
        description="The repositories (`owner/name`) it may act on; nothing else is dispatched.",
    )
    config: str | None = Field(
        None,
        max_length=64,
        pattern=backend_config.SLUG_RE.pattern,
        description="The config (profile) its runs use; its prompt holds the standing "
        "instructions. Default: `issue-implementer`, created on first use.",
    )
    poll_seconds: int = Field(
        0,
        ge=0,
        le=86_400,
        json_schema_extra={"not": {"minimum": 1, "maximum": 9}},
        description="Also list labeled issues every N seconds (for a server the forge cannot "
        "reach); 0: webhooks only. At least 10 when set.",
    )
    stop_on_unlabel: bool = Field(True, description="Removing the label stops the run.")
    closes_issue: bool = Field(True, description="The pull request says `Closes #N`.")
    draft: bool = Field(False, description="Open pull requests as drafts.")
    mention: str = Field(
        "@agentfarm",
        pattern=MENTION_RE.pattern,
        description="A pull-request comment mentioning this starts a follow-up run.",
    )
    state_labels: StateLabels = Field(default_factory=StateLabels)
    check_fix_attempts: int = Field(
        3, ge=0, le=20, description="Follow-ups on failing checks, at most, per window."
    )
    check_fix_window_minutes: int = Field(60, ge=1, le=10_080)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError("base_url must be an http(s) URL without query or fragment")
        if gittokens.has_url_credentials(value):
            raise ValueError("base_url may not carry credentials: store the token as a secret")
        return value

    @field_validator("poll_seconds")
    @classmethod
    def _check_poll(cls, value: int) -> int:
        if 0 < value < 10:
            raise ValueError("poll_seconds is 0 (webhooks only) or at least 10")
        return value

    @field_validator("repos")
    @classmethod
    def _unique_repos(cls, value: list[str]) -> list[str]:
        return sorted(set(value), key=value.index)


class ForgeIn(ForgeSettings):
    """A forge as a client sends it. The two secrets are stored, never shown again."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=64,
        pattern=backend_config.SLUG_RE.pattern,
        description="Unique slug; the webhook URL is `/api/forges/<name>/webhook`.",
    )
    token: SecretStr | None = Field(
        None,
        description="The token itself, stored under `token_secret` (or store it yourself "
        "with `agentfarm secret set`).",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="The webhook secret; generated (and shown once) when not given.",
    )


class Forge(ForgeSettings):
    """A configured forge as stored and shown: no secret in it, only their names."""

    id: str = Field(default_factory=new_id)
    name: str
    #: The stored secret that holds the webhook secret.
    webhook_secret_name: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def git_host(self) -> str:
        """``scheme://host[:port]``, where the forge serves git (the API root's origin)."""
        scheme, rest = self.base_url.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}"


def webhook_secret_name(forge_name: str) -> str:
    """The stored secret holding a forge's webhook secret."""
    return "FORGE_WEBHOOK_" + re.sub(r"[^A-Z0-9]", "_", forge_name.upper())


class AttemptKind(StrEnum):
    #: Implement the issue (the label was applied).
    issue = "issue"
    #: A pull-request comment mentioning the trigger asked for changes.
    review = "review"
    #: The pull request's checks failed: fix forward.
    checks = "checks"


class AttemptState(StrEnum):
    """Where an attempt stands. Each state names the next side effect to make, which is
    recorded (with its result) before the state moves on."""

    #: Recorded; nothing done on the forge yet (permission, Blocked-by and caps are checked).
    pending = "pending"
    #: Held: the kill switch, ``Blocked by #N`` or another attempt on the repository.
    waiting = "waiting"
    #: The run is submitted (``run_id`` set) and has not ended.
    running = "running"
    #: The run ended; its branch is being checked on the forge (pushed or not).
    finishing = "finishing"
    #: The branch is on the forge; the pull request is being found or opened.
    opening_pr = "opening_pr"
    #: Terminal: pull request opened (or updated by a follow-up).
    done = "done"
    #: Terminal: it did not work; ``reason`` says why and the issue was told.
    failed = "failed"
    #: Terminal: stopped by a person (label removed, stopped from the cockpit).
    stopped = "stopped"
    #: Terminal: not acted on (a label from a user without write access, ...).
    ignored = "ignored"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_ATTEMPT_STATES


TERMINAL_ATTEMPT_STATES = frozenset(
    {AttemptState.done, AttemptState.failed, AttemptState.stopped, AttemptState.ignored}
)


class Attempt(BaseModel):
    """One try at an issue. Untrusted text (title, body, request) is stored as the trigger
    saw it, already cleaned; it is only ever shown as text and quoted in a prompt."""

    id: str = Field(default_factory=new_id)
    forge_id: str
    repo: str
    number: int
    kind: AttemptKind = AttemptKind.issue
    #: 1 for the first attempt at the issue, 2 for the next, ... (follow-ups count too).
    seq: int = 1
    state: AttemptState = AttemptState.pending
    #: Why it waits, failed, stopped or was ignored; a sentence for people.
    reason: str = ""
    #: The login that applied the label or wrote the request.
    actor: str = ""
    delivery_id: str = ""
    title: str = ""
    body: str = ""
    #: A follow-up's request: the review comment, or the failing checks.
    request: str = ""
    branch: str = ""
    base_branch: str = ""
    clone_url: str = ""
    #: The base branch's head when the attempt started (to tell "no commits" apart).
    base_sha: str = ""
    head_sha: str = ""
    run_id: str | None = None
    comment_id: int | None = None
    pr_number: int | None = None
    pr_url: str = ""
    #: Done steps of the status checklist and when: ``{"queued": iso, "running": iso, ...}``.
    steps: dict[str, str] = Field(default_factory=dict)
    #: The attempt this one follows up (review or checks) on the same branch.
    parent_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def active(self) -> bool:
        return not self.state.terminal


class PendingLook(BaseModel):
    """A label delivery answered but not looked at yet. It is stored with the delivery's id
    before the answer and dropped once the look is made, so a restart in between makes it
    then: the forge never sends a delivery it had an answer to again."""

    repo: str
    number: int
    source: Literal["labeled", "unlabeled"]
    actor: str = ""
    delivery_id: str


class TrackedIssue(BaseModel):
    """An issue the pipeline has seen: what the forge last said of it (nothing yet, while it
    holds only the looks ``pending`` for it)."""

    forge_id: str
    repo: str
    number: int
    title: str = ""
    state: str = "open"
    labels: list[str] = Field(default_factory=list)
    seen_at: datetime = Field(default_factory=utcnow)
    pending: list[PendingLook] = Field(default_factory=list)


class Dispatch(BaseModel):
    """An orchestration request remembered by its client-chosen idempotency key."""

    key: str
    #: Who asked (a user id or ``token``); a key is scoped to its caller.
    caller: str
    #: A hash of the request body: the same key with another body is a conflict.
    digest: str
    run_id: str
    created_at: datetime = Field(default_factory=utcnow)
