"""A batch of events as Server-Sent Events, in one chunk.

``sse_starlette`` sends every item its generator yields with one ASGI ``send`` (through each
middleware, then one socket write): an item per event cost more than all the rest of an event's
way through the control plane. A committed batch is therefore encoded here, frame after frame,
and yielded as bytes, which ``sse_starlette`` sends as they are. The frames are what it would
have written for ``{"id": seq, "data": event JSON}``; the JSON is the event's
``model_dump_json`` with its data encoded once (``domain.events.event_json``), and holds no line
break (JSON escapes them), so each event is one ``data:`` line.
"""

from __future__ import annotations

from collections.abc import Sequence

from agentfarm.domain import events, models

#: ``sse_starlette``'s line separator.
SEP = "\r\n"


def frames(batch: Sequence[models.Event]) -> bytes:
    """``id: <seq>`` and ``data: <event JSON>`` per event, each event ended by a blank line."""
    return "".join(
        f"id: {event.seq}{SEP}data: {events.event_json(event)}{SEP}{SEP}" for event in batch
    ).encode()
