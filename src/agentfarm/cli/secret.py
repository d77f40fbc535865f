"""`agentfarm secret`: credentials kept by the server (0600); values are never printed."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agentfarm.cli import client, console

app = typer.Typer(no_args_is_help=True, help="Credentials kept by the server (0600).")


@app.command("set")
def secret_set(
    name: str,
    value: Annotated[
        str | None, typer.Option(help="The value; default: read from stdin or a prompt.")
    ] = None,
) -> None:
    """Store a secret, e.g. CLAUDE_CODE_OAUTH_TOKEN. The value is never printed."""
    if value is None:
        if sys.stdin.isatty():
            value = typer.prompt(f"value for {name}", hide_input=True)
        else:
            value = sys.stdin.read().strip()
    if not value:
        console.fail("empty value; pass it on stdin or with --value")
    with client.Client() as c:
        c.request("PUT", f"/api/secrets/{name}", json={"value": value})
    console.out.print(f"secret {name} stored")


@app.command("ls")
def secret_ls(as_json: console.JsonFlag = False) -> None:
    """List secret names (never values)."""
    with client.Client() as c:
        names = c.get("/api/secrets")["names"]
    if as_json:
        console.print_json(names)
    else:
        for name in names:
            console.out.print(name)


@app.command("rm")
def secret_rm(name: str) -> None:
    """Delete a secret."""
    with client.Client() as c:
        c.request("DELETE", f"/api/secrets/{name}")
    console.out.print(f"secret {name} removed")
