"""A denial travels from the proxy's report, as an ``egress`` spool frame, to a
``sandbox.egress_denied`` event that the cockpit and the CLI show."""

from __future__ import annotations

import json

from agentfarm.backends.local import spool
from agentfarm.cli import event_text
from agentfarm.domain import models
from agentfarm.domain.redact import Redactor
from agentfarm.supervisor import events
from agentfarm.web import event_html


def test_egress_frames_become_denial_events() -> None:
    body = {"host": "pypi.org", "port": 443, "reason": "not on the run's egress allow-list"}
    frame = spool.encode("egress", json.dumps(body).encode())[0]
    [record], _ = spool.parse(frame, 0)
    assert record.kind == "egress"
    [draft] = events.translate(None, record, Redactor())  # type: ignore[arg-type]  # no parser needed
    assert draft.type == models.EventType.sandbox_egress_denied == "sandbox.egress_denied"
    assert draft.data == body


def test_a_garbled_report_still_says_something() -> None:
    draft = events.egress_event(b"not json")
    assert draft.type == "sandbox.egress_denied" and draft.data == {"reason": "not json"}
    draft = events.egress_event(json.dumps({"host": "h", "port": 1, "secret": "x"}).encode())
    assert draft.data == {"host": "h", "port": 1}


def test_cockpit_and_cli_show_host_port_and_reason() -> None:
    data = {"host": "pypi.org", "port": 443, "reason": "not on the list"}
    event = models.Event(run_id="r", seq=1, type="sandbox.egress_denied", data=data)
    html = event_html.event_html(event)
    assert "pypi.org:443" in html and "not on the list" in html
    line = event_text.event_line(event.model_dump(mode="json"))
    assert line is not None and "pypi.org:443" in line.plain and "not on the list" in line.plain


def test_an_agent_chosen_host_is_shown_as_text() -> None:
    # The proxy passes printable ASCII through: markup is what is left to an agent.
    data = {"host": '<img src=x onerror="alert(1)">', "port": 80, "reason": "[bold]no[/]"}
    event = models.Event(run_id="esc", seq=7, type="sandbox.egress_denied", data=data)
    html = event_html.event_html(event)
    assert "<img" not in html and "&lt;img src=x onerror=" in html
    line = event_text.event_line(event.model_dump(mode="json"))
    assert (
        line is not None
        and "[bold]no[/]" in line.plain
        and '<img src=x onerror="alert(1)">' in line.plain
    )
