"""`agentfarm user token`: named API tokens with scopes (read < operate < admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from agentfarm.cli import client, console

app = typer.Typer(no_args_is_help=True, help="Named API tokens, with scopes.")
SCOPES = ("read", "operate", "admin")


@app.command("create")
def token_create(
    name: str,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="read, operate (launch, stop, dispatch) or admin (users, secrets, config "
            "changes, forges); each includes the lower ones. Default: all the user's role allows.",
        ),
    ] = None,
    expires_days: Annotated[
        int | None, typer.Option("--expires-days", min=1, max=3650, help="Expire after N days.")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Whose token (admins); default: yours.")
    ] = None,
    as_json: console.JsonFlag = False,
) -> None:
    """Create a token and print its secret (shown this once)."""
    for item in scope or ():
        if item not in SCOPES:
            console.fail(f"unknown scope {item!r}: choose from {', '.join(SCOPES)}")
    body: dict[str, object] = {"name": name}
    if scope:
        body["scopes"] = scope
    if expires_days:
        body["expires_days"] = expires_days
    if user:
        body["user"] = user
    with client.Client() as c:
        made = c.post("/api/tokens", json=body)
    if as_json:
        console.print_json(made)
        return
    console.err.print(
        f"token {made['name']} of {made['user']} ({', '.join(made['scopes'])}); copy it now, "
        "it is not shown again:",
        highlight=False,
    )
    console.out.print(made["token"], highlight=False, soft_wrap=True)


@app.command("ls")
def token_ls(as_json: console.JsonFlag = False) -> None:
    """List tokens (an admin sees everyone's)."""
    with client.Client() as c:
        found = c.get("/api/tokens")
    if as_json:
        console.print_json(found)
        return
    for t in found:
        expires = f", expires {t['expires_at'][:10]}" if t.get("expires_at") else ""
        console.out.print(
            f"{t['id']}  {t['name']}  of {t['user']}  ({', '.join(t['scopes'])}{expires})",
            highlight=False,
        )


@app.command("rm")
def token_rm(token_id: str) -> None:
    """Revoke a token by its id (`agentfarm user token ls` shows them)."""
    with client.Client() as c:
        c.request("DELETE", f"/api/tokens/{token_id}")
    console.out.print(f"token {token_id} revoked", highlight=False)
