"""The forges' webhook endpoint. No login: the delivery's signature is the authentication,
checked against the forge's stored webhook secret before anything is read or done."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

from agentfarm.domain.backend_config import SLUG_RE
from agentfarm.pipeline import service

router = APIRouter(prefix="/api")

ForgeName = Annotated[
    str, Path(min_length=1, max_length=64, json_schema_extra={"pattern": SLUG_RE.pattern})
]


class DeliveryAnswer(BaseModel):
    #: ``accepted``: queued to be looked at; ``duplicate``: seen before (a replay), dropped;
    #: ``ignored``: nothing agentfarm acts on (another event, a repository not allow-listed).
    status: service.DeliveryStatus


@router.post(
    "/forges/{name}/webhook",
    status_code=202,
    response_model=DeliveryAnswer,
    tags=["forges"],
    summary="Receive a signed webhook delivery from a forge",
    responses={
        400: {"description": "Signed, but not a delivery agentfarm can read."},
        401: {"description": "The signature is missing or wrong; nothing was done."},
        404: {"description": "No forge by that name."},
    },
)
async def receive(name: ForgeName, request: Request) -> DeliveryAnswer:
    pipeline: service.Pipeline = request.app.state.pipeline
    body = await request.body()
    status = await pipeline.handle_delivery(name, request.headers, body)
    return DeliveryAnswer(status=status)
