"""`agentfarm user`: cockpit users (password logins), administered over the API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agentfarm.cli import client, console, tokens

app = typer.Typer(no_args_is_help=True, help="Cockpit users (password logins) and their tokens.")
app.add_typer(tokens.app, name="token")


def read_password(name: str) -> str:
    if sys.stdin.isatty():
        password: str = typer.prompt(
            f"password for {name}", hide_input=True, confirmation_prompt=True
        )
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        console.fail("the password needs at least 8 characters")
    return password


@app.command("add")
def user_add(
    name: str,
    admin: Annotated[
        bool, typer.Option("--admin", help="Administers users and sees every API token.")
    ] = False,
) -> None:
    """Create a cockpit user; the password is prompted for (or read from stdin). The first
    user is an admin."""
    password = read_password(name)
    with client.Client() as c:
        made = c.post("/api/admin/users", json={"name": name, "password": password, "admin": admin})
    role = "admin" if made and made.get("admin") else "user"
    console.out.print(f"{role} {name} created: sign in at {c.url}/login", highlight=False)


@app.command("passwd")
def user_passwd(name: str) -> None:
    """Set a user's password (signs them out everywhere)."""
    password = read_password(name)
    with client.Client() as c:
        c.request("PUT", f"/api/admin/users/{name}/password", json={"password": password})
    console.out.print(f"password of {name} changed")


@app.command("role")
def user_role(
    name: str,
    admin: Annotated[
        bool, typer.Option("--admin/--no-admin", help="Make the user an admin, or not.")
    ],
) -> None:
    """Make a user an admin (`--admin`) or an ordinary user (`--no-admin`)."""
    with client.Client() as c:
        c.request("PUT", f"/api/admin/users/{name}/role", json={"admin": admin})
    console.out.print(
        f"{name} is {'an admin' if admin else 'an ordinary user'} now", highlight=False
    )


@app.command("ls")
def user_ls(as_json: console.JsonFlag = False) -> None:
    """List cockpit users."""
    with client.Client() as c:
        users = c.get("/api/admin/users")
    if as_json:
        console.print_json(users)
        return
    for user in users:
        role = ", admin" if user.get("admin") else ""
        console.out.print(
            f"{user['name']}  (since {user['created_at'][:10]}{role})", highlight=False
        )


@app.command("rm")
def user_rm(name: str) -> None:
    """Delete a user and end their sessions."""
    with client.Client() as c:
        c.request("DELETE", f"/api/admin/users/{name}")
    console.out.print(f"user {name} removed")
