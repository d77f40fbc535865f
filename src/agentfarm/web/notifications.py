"""Notifications over the API: the configured targets (shown by scheme and host only), a test
message (admins), and Web Push subscriptions of the signed-in browser."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from agentfarm.domain import errors, models
from agentfarm.settings import Settings
from agentfarm.store import push
from agentfarm.supervisor import notify, webpush
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web import identity
from agentfarm.web.auth import check_bearer

router = APIRouter(prefix="/api", tags=["notifications"])

Who = Annotated[identity.Principal, Depends(check_bearer)]


def notifier(request: Request) -> notify.Notifier:
    sup: Supervisor = request.app.state.supervisor
    return sup.notifier


class TargetOut(BaseModel):
    target: str = Field(..., description="Scheme and host only: the rest of a URL is a secret.")
    source: str = Field(..., description="`AGENTFARM_NOTIFY_URLS` or the secret's name.")


class Targets(BaseModel):
    targets: list[TargetOut]
    events: list[str]
    push_subscriptions: int
    push_available: bool


class OutcomeOut(BaseModel):
    target: str
    ok: bool
    detail: str


class TestResult(BaseModel):
    sent: int
    failed: int
    outcomes: list[OutcomeOut]


async def overview(request: Request) -> Targets:
    n = notifier(request)
    found = await n.targets()
    subs = await n.push.subscriptions.list() if n.push is not None else []
    return Targets(
        targets=[TargetOut(target=t.shown, source=t.source) for t in found],
        events=list(n.settings.notify_events),
        push_subscriptions=len(subs),
        push_available=n.push is not None and n.push.public_key is not None,
    )


async def send_test(request: Request, who: identity.Principal) -> TestResult:
    n = notifier(request)
    settings: Settings = request.app.state.settings
    url = settings.public_url.rstrip("/") + "/" if settings.public_url else None
    note = notify.Notification(
        kind=notify.Kind.test,
        title="agentfarm: test notification",
        body=f"A test sent by {who.name} from the settings page. Notifications work.",
        url=url,
    )
    outcomes = await n.send(note)
    return TestResult(
        sent=sum(o.ok for o in outcomes),
        failed=sum(not o.ok for o in outcomes),
        outcomes=[OutcomeOut(target=o.target, ok=o.ok, detail=o.detail) for o in outcomes],
    )


@router.get("/notifications", response_model=Targets)
async def list_targets(request: Request, _: Who) -> Targets:
    return await overview(request)


@router.post("/notifications/test", response_model=TestResult)
async def test_notification(request: Request, who: Who) -> TestResult:
    """Send a `test` notification to every target now; says how each send went. Needs the
    admin scope (``domain.scopes``): it reaches every target, people's phones included."""
    return await send_test(request, who)


# --- Web Push ------------------------------------------------------------------------------
class PushKeys(BaseModel):
    model_config = ConfigDict(extra="ignore")
    p256dh: str = Field(..., min_length=16, max_length=200, pattern=r"^[A-Za-z0-9_=-]+$")
    auth: str = Field(..., min_length=8, max_length=100, pattern=r"^[A-Za-z0-9_=-]+$")


class PushSubscriptionIn(BaseModel):
    """What the browser's ``PushSubscription.toJSON()`` gives."""

    model_config = ConfigDict(extra="ignore")
    endpoint: str = Field(..., min_length=10, max_length=2048)
    keys: PushKeys


class PushEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str = Field(..., min_length=10, max_length=2048)


class PushKey(BaseModel):
    public_key: str | None = Field(
        ..., description="The VAPID application server key (base64url); null: push is off."
    )


def _push(request: Request) -> webpush.WebPush:
    web_push = notifier(request).push
    if web_push is None or web_push.public_key is None:
        raise errors.ConfigurationError(
            "Web Push is off on this server (its VAPID key could not be read or made: the "
            "server's log says why)"
        )
    return web_push


def _owner(who: identity.Principal) -> str:
    return who.user_id or f"{who.kind}:{who.name}"


@router.get("/push/key", response_model=PushKey)
async def push_key(request: Request, _: Who) -> PushKey:
    web_push = notifier(request).push
    return PushKey(public_key=web_push.public_key if web_push is not None else None)


@router.post("/push/subscriptions", status_code=201)
async def subscribe(body: PushSubscriptionIn, request: Request, who: Who) -> dict[str, str]:
    web_push = _push(request)
    settings: Settings = request.app.state.settings
    problem = webpush.check_endpoint(body.endpoint, allow_http=settings.push_allow_http)
    if problem is not None:
        raise errors.InvalidInputError(f"{problem}; subscribe from the cockpit's settings page")
    sub = push.Subscription(
        endpoint=body.endpoint, p256dh=body.keys.p256dh, auth=body.keys.auth,
        owner=_owner(who), created_at=models.utcnow(),
    )  # fmt: skip
    await web_push.subscriptions.add(sub)
    return {"status": "subscribed", "push_service": webpush.shown(body.endpoint)}


@router.delete("/push/subscriptions", status_code=204)
async def unsubscribe(body: PushEndpoint, request: Request, who: Who) -> Response:
    web_push = _push(request)
    # An admin may remove any browser's; others only their own.
    if not await web_push.subscriptions.remove(body.endpoint, None if who.admin else _owner(who)):
        raise errors.NotFoundError(
            "this browser has no push subscription here (or it is someone else's)"
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
