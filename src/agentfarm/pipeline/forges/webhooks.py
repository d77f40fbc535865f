"""Webhook deliveries: signature checks and parsing into one normalized :class:`Trigger`.

Pure: no I/O, no clock. A trigger only says "look at this issue (or commit) again"; the
pipeline reconciles from what the forge shows, so a lost, doubled or reordered delivery changes
nothing (the delivery id is there for deduplication).

GitHub signs with ``X-Hub-Signature-256: sha256=<hex>``; Forgejo and Gitea send the bare hex
HMAC in ``X-Forgejo-Signature`` and ``X-Gitea-Signature``. Forgejo/Gitea report label changes
as ``label_updated``/``label_cleared`` with no ``label`` field: the issue's labels are compared
with the ones known before, when the caller knows them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar

from agentfarm.domain import errors as domain_errors
from agentfarm.pipeline.forges import errors, parse, types
from agentfarm.pipeline.forges.http import valid_repo

T = TypeVar("T")
#: GitHub and Forgejo send a UUID; anything much longer is not a delivery id.
MAX_DELIVERY_ID = 200
TriggerKind = Literal["labeled", "unlabeled", "comment", "status"]


class InvalidDeliveryError(domain_errors.InvalidInputError):
    """The delivery is signed correctly but is not a payload we can read."""


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    repo: str
    #: The issue or pull request; None for a commit status.
    number: int | None
    actor: str
    delivery_id: str
    label: str = ""
    #: The issue's labels as the delivery shows them.
    labels: tuple[str, ...] = ()
    is_pull: bool = False
    comment_id: int | None = None
    comment: str = ""
    sha: str = ""
    state: types.CheckState = "none"
    check: str = ""


def dump_trigger(trigger: Trigger) -> str:
    """``trigger`` as JSON, to be kept with its delivery until it was acted on."""
    return json.dumps(asdict(trigger), ensure_ascii=False)


def load_trigger(data: str) -> Trigger:
    """A trigger from :func:`dump_trigger`'s JSON; ValueError when it is not one."""
    raw = json.loads(data)
    names = {f.name for f in fields(Trigger)}
    if not isinstance(raw, dict) or not set(raw) <= names:
        raise ValueError("not a kept trigger")
    raw["labels"] = tuple(str(label) for label in raw.get("labels") or ())
    try:
        return Trigger(**raw)
    except TypeError as exc:  # a required field missing
        raise ValueError(f"not a kept trigger: {exc}") from None


def delivery_id(kind: str, headers: Mapping[str, str]) -> str:
    """The delivery's id from its forge's header ("" when there is none)."""
    lower = {key.lower(): value for key, value in headers.items()}
    names = ("x-github-",) if kind == "github" else ("x-forgejo-", "x-gitea-", "x-gogs-")
    return next((lower[n + "delivery"] for n in names if n + "delivery" in lower), "")


@dataclass(frozen=True)
class _Source:
    repo: str
    delivery_id: str
    actor: str


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def sign(kind: types.ForgeKind, secret: str, body: bytes) -> str:
    """The signature header value a forge of ``kind`` sends for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}" if kind == "github" else digest


def verify_signature(
    kind: types.ForgeKind, secret: str, body: bytes, headers: Mapping[str, str]
) -> bool:
    """True only for a present, correct signature under a non-empty secret."""
    if not secret:
        return False
    lower = _lower(headers)
    expected = sign(kind, secret, body)
    if kind == "github":
        given = lower.get("x-hub-signature-256", "")
    else:
        given = lower.get("x-forgejo-signature") or lower.get("x-gitea-signature") or ""
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode())


def parse_delivery(
    kind: types.ForgeKind,
    headers: Mapping[str, str],
    body: bytes,
    *,
    trigger_label: str,
    known_labels: Collection[str] | None = None,
) -> Trigger | None:
    """The trigger a verified delivery carries, or None when it concerns nothing we act on."""
    lower = _lower(headers)
    prefix = ("x-github-",) if kind == "github" else ("x-forgejo-", "x-gitea-", "x-gogs-")
    event = next((lower[p + "event"] for p in prefix if p + "event" in lower), "")
    delivery = next((lower[p + "delivery"] for p in prefix if p + "delivery" in lower), "")
    if not event or not delivery:
        raise InvalidDeliveryError(
            "the delivery has no event or delivery id header: send it from the forge's webhook"
        )
    if len(delivery) > MAX_DELIVERY_ID or not delivery.isprintable():
        raise InvalidDeliveryError("the delivery id header is too long or not printable")
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidDeliveryError(
            "the delivery body is not JSON: set the webhook's content type to application/json"
        ) from None
    except RecursionError:  # a nesting bomb: no forge sends one
        raise InvalidDeliveryError("the delivery body is nested too deeply to read") from None
    if not isinstance(payload, dict):
        raise InvalidDeliveryError("the delivery body is not a JSON object")
    repo = str(_at(payload, "repository", "full_name"))
    if event == "ping" or not repo:
        return None
    if not valid_repo(repo):
        raise InvalidDeliveryError(f"the delivery names no valid repository ({repo[:100]!r})")
    base = _Source(repo, delivery, str(_at(payload, "sender", "login")))
    if event in ("issues", "issue_label"):
        return _label_trigger(payload, base, trigger_label, known_labels)
    if event in ("issue_comment", "pull_request_comment"):
        return _comment_trigger(payload, base)
    if event == "status":
        return Trigger(
            kind="status",
            number=None,
            sha=str(payload.get("sha") or ""),
            state=parse.check_state(payload.get("state")),
            check=str(payload.get("context") or ""),
            repo=base.repo,
            delivery_id=base.delivery_id,
            actor=base.actor,
        )
    if event == "check_run" and payload.get("action") == "completed":
        run = payload.get("check_run")
        run = run if isinstance(run, dict) else {}
        return Trigger(
            kind="status",
            number=None,
            sha=str(run.get("head_sha") or ""),
            state=parse.check_state(run.get("conclusion")),
            check=str(run.get("name") or ""),
            repo=base.repo,
            delivery_id=base.delivery_id,
            actor=base.actor,
        )
    return None


def _at(payload: Any, *keys: str) -> Any:
    for key in keys:
        payload = payload.get(key) if isinstance(payload, dict) else None
    return payload if payload is not None else ""


def _read(reader: Callable[[Any], T], value: Any) -> T:
    try:
        return reader(value)
    except errors.PermanentForgeError:
        raise InvalidDeliveryError(
            "the delivery's issue or comment is malformed: send it from the forge's webhook"
        ) from None


def _number(payload: dict[str, Any]) -> int:
    number = _at(payload, "issue", "number")
    if not isinstance(number, int) or number <= 0:
        raise InvalidDeliveryError("the delivery carries no issue number")
    return number


def _label_trigger(
    payload: dict[str, Any],
    base: _Source,
    trigger_label: str,
    known: Collection[str] | None,
) -> Trigger | None:
    action = payload.get("action")
    issue = _read(parse.issue, payload.get("issue"))
    labels = () if action == "label_cleared" else issue.labels
    kind: TriggerKind
    if action in ("labeled", "unlabeled") and "label" in payload:
        if _at(payload, "label", "name") != trigger_label:
            return None
        kind = "labeled" if action == "labeled" else "unlabeled"
    elif action in ("label_updated", "label_cleared"):
        now = trigger_label in labels
        if known is not None and now == (trigger_label in known):
            return None  # another label changed
        kind = "labeled" if now else "unlabeled"
    else:
        return None
    return Trigger(
        kind=kind,
        number=_number(payload),
        label=trigger_label,
        labels=labels,
        repo=base.repo,
        delivery_id=base.delivery_id,
        actor=base.actor,
    )


def _comment_trigger(payload: dict[str, Any], base: _Source) -> Trigger | None:
    # Only new comments: an edit made after the fact must not become a new request.
    if payload.get("action") != "created":
        return None
    comment = _read(parse.comment, payload.get("comment"))
    is_pull = bool(payload.get("is_pull")) or bool(_at(payload, "issue", "pull_request"))
    return Trigger(
        kind="comment",
        number=_number(payload),
        labels=_read(parse.issue, payload.get("issue")).labels,
        is_pull=is_pull,
        comment_id=comment.id,
        comment=comment.body,
        repo=base.repo,
        delivery_id=base.delivery_id,
        actor=comment.author or base.actor,
    )
