"""A page of events as a JSON array, each event's JSON encoded once
(``domain.events.event_json``, byte for byte the model's own JSON). The SSE frames are in
``web.sse``, which uses the same encoding."""

from __future__ import annotations

from collections.abc import Sequence

from agentfarm.domain import events, models


def json_array(page: Sequence[models.Event]) -> bytes:
    """The events as a JSON array: what the response model would write, without validating
    and encoding every event again (events come from the store: valid)."""
    return ("[" + ",".join(events.event_json(event) for event in page) + "]").encode()
