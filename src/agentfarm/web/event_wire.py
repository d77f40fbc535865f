"""Events on the wire, each event's JSON encoded once (``domain.events.event_json``): a batch
as Server-Sent Events in one chunk, and a page of them as a JSON array.

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


def json_array(page: Sequence[models.Event]) -> bytes:
    """The events as a JSON array: what the response model would write, without validating
    and encoding every event again (events come from the store: valid)."""
    return ("[" + ",".join(events.event_json(event) for event in page) + "]").encode()
