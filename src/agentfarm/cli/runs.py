"""The run commands: launch and follow, list, logs, stop, remove, send, interrupt, show."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from agentfarm.cli import client, console, event_text
from agentfarm.domain import present


def follow(c: client.Client, run_id: str, *, as_json: bool) -> str:
    """Print events until the run ends; returns the final status."""
    status = "?"
    for event in c.stream_events(run_id):
        if event["type"] == "run.status":
            status = event["data"].get("status", status)
        if as_json:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
            continue
        line = event_text.event_line(event)
        if line is not None:
            console.out.print(line, highlight=False)
    return status


def queue_text(run: dict[str, Any]) -> str | None:
    """``queued #2 of 5, waiting for global cap 4/4`` for a queued run, else None."""
    info = run.get("queue")
    if not isinstance(info, dict):
        return None
    text = f"queued #{info.get('position')} of {info.get('length')}"
    waiting = info.get("waiting_for")
    return f"{text}, waiting for {waiting}" if waiting else f"{text}, starting"


def run(
    config: Annotated[str, typer.Argument(help="Config name or id.")],
    prompt: Annotated[str | None, typer.Option(help="Override the config's prompt.")] = None,
    detach: Annotated[bool, typer.Option(help="Print the run id and return.")] = False,
    as_json: console.JsonFlag = False,
) -> None:
    """Launch a run of a saved config and follow it (Ctrl-C detaches)."""
    body: dict[str, Any] = {"config": config}
    if prompt is not None:
        body["prompt"] = prompt
    with client.Client() as c:
        created = c.post("/api/runs", json=body)
        run_id = created["id"]
        if detach:
            console.print_json(created) if as_json else console.out.print(run_id)
            return
        if not as_json:
            console.out.print(
                f"run [bold]{run_id}[/] on branch {created.get('branch')}", highlight=False
            )
            waiting = queue_text(created)
            if waiting:
                console.out.print(waiting, highlight=False, markup=False)
        try:
            status = follow(c, run_id, as_json=as_json)
        except KeyboardInterrupt:
            console.err.print(f"detached; the run goes on. Stop it with `agentfarm stop {run_id}`")
            raise typer.Exit(130) from None
    if status in ("failed", "lost"):
        raise typer.Exit(1)


def list_runs(
    status: Annotated[list[str] | None, typer.Option(help="Filter, repeatable.")] = None,
    limit: Annotated[int, typer.Option()] = 30,
    as_json: console.JsonFlag = False,
) -> None:
    """List runs, newest first."""
    with client.Client() as c:
        runs = c.get("/api/runs", params={"status": status or [], "limit": limit})
    if as_json:
        console.print_json(runs)
        return
    table = Table("id", "status", "agent", "config", "branch", "cost", "turns", "created", box=None)
    for r in runs:
        style = event_text.STATUS_STYLE.get(r["status"], "white")
        shown = queue_text(r) or r["status"]
        if r["status"] == "parked":
            shown = present.parked_label(r.get("parked_until"))
        table.add_row(
            r["id"],
            f"[{style}]{escape(shown)}[/]" + (" [yellow]⚠[/]" if r.get("warning") else ""),
            (r.get("spec") or {}).get("agent") or "claude",
            r.get("config_name") or "-",
            r.get("branch") or "-",
            present.fmt_cost(r.get("cost_usd"), bool(r.get("cost_estimated"))),
            str(r.get("num_turns") or "-"),
            r["created_at"][:19].replace("T", " "),
        )
    console.out.print(table)


def logs(
    run_id: str,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Stream until it ends.")] = False,
    as_json: console.JsonFlag = False,
) -> None:
    """Show a run's events (readable, or JSON lines with --json)."""
    with client.Client() as c:
        if follow_:
            try:
                follow(c, run_id, as_json=as_json)
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
            return
        after = 0
        while True:
            events = c.get(f"/api/runs/{run_id}/events", params={"after": after, "limit": 5000})
            for event in events:
                if as_json:
                    sys.stdout.write(json.dumps(event) + "\n")
                else:
                    line = event_text.event_line(event)
                    if line is not None:
                        console.out.print(line, highlight=False)
            if len(events) < 5000:
                break
            after = events[-1]["seq"]


def stop(run_id: str, as_json: console.JsonFlag = False) -> None:
    """Stop a run: interrupt, SIGTERM, then SIGKILL after the grace period."""
    with client.Client() as c:
        result = c.post(f"/api/runs/{run_id}/stop")
    if as_json:
        console.print_json(result)
    else:
        console.out.print(f"stopping run {run_id}")


def remove_run(run_id: str) -> None:
    """Delete an ended run: its files, row and events (its branch stays in the repository)."""
    with client.Client() as c:
        c.delete(f"/api/runs/{run_id}")
    console.out.print(f"run {run_id} removed", highlight=False)


def resume(
    run_id: str,
    prompt: Annotated[
        str | None, typer.Argument(help="What to tell the agent; `-` reads it from stdin.")
    ] = None,
    as_json: console.JsonFlag = False,
) -> None:
    """Resume a parked run now, rather than when its usage limit resets, or continue an ended
    run with a new prompt (its session, workspace and branch)."""
    if prompt == "-":
        prompt = sys.stdin.read()
    body = {"prompt": prompt} if prompt and prompt.strip() else None
    with client.Client() as c:
        result = c.post(f"/api/runs/{run_id}/resume", json=body)
    if as_json:
        console.print_json(result)
    else:
        console.out.print(f"resuming run {run_id}", highlight=False)


def send(
    run_id: str,
    text: Annotated[str, typer.Argument(help="The message; `-` reads it from stdin.")],
) -> None:
    """Send a follow-up message to a running agent: answered after its running turn, or at
    once while it waits for one (the config's followup_window_seconds)."""
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        console.err.print("[red]error:[/] the message is empty: give the text, or `-` and pipe it")
        raise typer.Exit(2)
    with client.Client() as c:
        c.post(f"/api/runs/{run_id}/messages", json={"text": text})
    console.out.print("sent")


def interrupt(run_id: str) -> None:
    """Interrupt the agent's running turn without ending the run; then `agentfarm send` it
    what to do instead."""
    with client.Client() as c:
        c.post(f"/api/runs/{run_id}/interrupt")
    console.out.print(f"interrupted; the agent waits for `agentfarm send {run_id} ...`")


def show(run_id: str) -> None:
    """Show one run as JSON."""
    with client.Client() as c:
        console.print_json(c.get(f"/api/runs/{run_id}"))


def spend(as_json: console.JsonFlag = False) -> None:
    """Show what runs cost today and this month, per config, origin and forge, against the
    budgets."""
    with client.Client() as c:
        report = c.get("/api/spend")
    if as_json:
        console.print_json(report)
        return

    def of(spent: float, budget: float | None) -> str:
        shown = present.fmt_cost(spent)
        return f"{shown} of {present.fmt_cost(budget)}" if budget else shown

    console.out.print(
        f"today {of(report['today_usd'], report['daily_budget_usd'])} · "
        f"this month {of(report['month_usd'], report['monthly_budget_usd'])}",
        highlight=False,
    )
    table = Table("config / origin / forge", "today", "this month", box=None)
    forges = [{**line, "name": f"forge {line['name']}"} for line in report.get("by_forge", [])]
    for line in report["by_config"] + report["by_origin"] + forges:
        table.add_row(
            line["name"],
            of(line["today_usd"], line.get("daily_budget_usd")),
            of(line["month_usd"], line.get("monthly_budget_usd")),
        )
    console.out.print(table)
