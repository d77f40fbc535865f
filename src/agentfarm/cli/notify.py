"""`agentfarm notify`: the notification targets (scheme and host only) and a test message."""

from __future__ import annotations

import typer

from agentfarm.cli import client, console

app = typer.Typer(no_args_is_help=True, help="Notifications: where they go, and a test.")


@app.command("ls")
def notify_ls(as_json: console.JsonFlag = False) -> None:
    """The farm-wide targets (scheme and host: the rest of a URL is its token), the events
    sent and how many browsers get Web Push."""
    with client.Client() as c:
        found = c.get("/api/notifications")
    if as_json:
        console.print_json(found)
        return
    for target in found["targets"]:
        console.out.print(f"{target['target']}  (from {target['source']})", highlight=False)
    if not found["targets"]:
        console.out.print(
            "no farm-wide targets: `agentfarm secret set NOTIFY_URLS '<apprise url>'`"
        )
    console.out.print(f"web push: {found['push_subscriptions']} browser(s)", highlight=False)
    console.out.print(f"events: {', '.join(found['events']) or 'none'}", highlight=False)


@app.command("test")
def notify_test(as_json: console.JsonFlag = False) -> None:
    """Send a test notification to every target now (needs an admin's token) and say how
    each send went; exits 1 when one failed or there was nothing to send to."""
    with client.Client() as c:
        result = c.post("/api/notifications/test")
    if as_json:
        console.print_json(result)
    else:
        for outcome in result["outcomes"]:
            word = "sent" if outcome["ok"] else f"failed: {outcome['detail']}"
            console.out.print(f"{outcome['target']}: {word}", highlight=False, markup=False)
        if not result["outcomes"]:
            console.err.print(
                "nothing to send to: set AGENTFARM_NOTIFY_URLS or the secret NOTIFY_URLS, "
                "or subscribe a browser on the settings page",
                highlight=False,
            )
    if result["failed"] or not result["outcomes"]:
        raise typer.Exit(1)
