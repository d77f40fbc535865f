"""`agentfarm pipeline`: the kill switch and the attempts the pipeline made on issues."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentfarm.cli import client, console

app = typer.Typer(no_args_is_help=True, help="Issues turned into runs: pause, resume, list.")


def _set_paused(paused: bool) -> None:
    with client.Client() as c:
        answer = c.request("PUT", "/api/pipeline/pause", json={"paused": paused})
    if answer["paused"]:
        console.out.print("pipeline paused: nothing new is dispatched (runs going on go on)")
    else:
        console.out.print("pipeline resumed: labeled issues are dispatched again")


@app.command("pause")
def pipeline_pause() -> None:
    """The kill switch: stop dispatching issues to agents, on every forge."""
    _set_paused(True)


@app.command("resume")
def pipeline_resume() -> None:
    """Dispatch labeled issues again."""
    _set_paused(False)


@app.command("ls")
def pipeline_ls(
    forge: Annotated[str | None, typer.Option(help="Only this forge's attempts.")] = None,
    state: Annotated[
        list[str] | None, typer.Option(help="Only attempts in this state; repeatable.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: console.JsonFlag = False,
) -> None:
    """Attempts, newest first: issue, state, branch, run, pull request, reason."""
    params: dict[str, Any] = {"limit": limit}
    if forge:
        params["forge"] = forge
    if state:
        params["state"] = state
    with client.Client() as c:
        view = c.get("/api/pipeline", params=params)
    if as_json:
        console.print_json(view)
        return
    if view["paused"]:
        console.out.print(
            "[yellow]paused[/]: nothing new is dispatched (`agentfarm pipeline resume`)"
        )
    forges = {f["id"]: f["name"] for f in view["forges"]}
    table = Table("attempt", "forge", "issue", "state", "branch", "run", "pull", "reason", box=None)
    for a in view["attempts"]:
        # Titles, reasons and branches come from forges and agents: shown as text, never markup.
        table.add_row(
            Text(a["id"]),
            Text(forges.get(a["forge_id"], "?")),
            Text(f"{a['repo']}#{a['number']} {a['title'][:40]}".rstrip()),
            Text(a["state"]),
            Text(a["branch"] or "-"),
            Text(a["run_id"] or "-"),
            Text(a["pr_url"] or "-"),
            Text(a["reason"][:80] or "-"),
        )
    console.out.print(table)


@app.command("retry")
def pipeline_retry(attempt: str) -> None:
    """Try an ended attempt's issue again (a new attempt on a new branch)."""
    with client.Client() as c:
        made = c.post(f"/api/pipeline/attempts/{attempt}/retry")
    console.out.print(
        Text(f"attempt {made['id']} ({made['state']}) for {made['repo']}#{made['number']}")
    )


@app.command("stop")
def pipeline_stop(attempt: str) -> None:
    """Stop an attempt and its run."""
    with client.Client() as c:
        made = c.post(f"/api/pipeline/attempts/{attempt}/stop")
    console.out.print(Text(f"attempt {made['id']} is {made['state']}"))
