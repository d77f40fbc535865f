"""`agentfarm user`: cockpit users (password logins), administered over the API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agentfarm.cli.client import Client
from agentfarm.cli.console import JsonFlag, fail, out, print_json

app = typer.Typer(no_args_is_help=True, help="Cockpit users (password logins).")


def read_password(name: str) -> str:
    if sys.stdin.isatty():
        password: str = typer.prompt(
            f"password for {name}", hide_input=True, confirmation_prompt=True
        )
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        fail("the password needs at least 8 characters")
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
    with Client() as c:
        made = c.post("/api/admin/users", json={"name": name, "password": password, "admin": admin})
    role = "admin" if made and made.get("admin") else "user"
    out.print(f"{role} {name} created: sign in at {c.url}/login", highlight=False)


@app.command("passwd")
def user_passwd(name: str) -> None:
    """Set a user's password (signs them out everywhere)."""
    password = read_password(name)
    with Client() as c:
        c.request("PUT", f"/api/admin/users/{name}/password", json={"password": password})
    out.print(f"password of {name} changed")


@app.command("role")
def user_role(
    name: str,
    admin: Annotated[
        bool, typer.Option("--admin/--no-admin", help="Make the user an admin, or not.")
    ],
) -> None:
    """Make a user an admin (`--admin`) or an ordinary user (`--no-admin`)."""
    with Client() as c:
        c.request("PUT", f"/api/admin/users/{name}/role", json={"admin": admin})
    out.print(f"{name} is {'an admin' if admin else 'an ordinary user'} now", highlight=False)


@app.command("ls")
def user_ls(as_json: JsonFlag = False) -> None:
    """List cockpit users."""
    with Client() as c:
        users = c.get("/api/admin/users")
    if as_json:
        print_json(users)
        return
    for user in users:
        role = ", admin" if user.get("admin") else ""
        out.print(f"{user['name']}  (since {user['created_at'][:10]}{role})", highlight=False)


@app.command("rm")
def user_rm(name: str) -> None:
    """Delete a user and end their sessions."""
    with Client() as c:
        c.request("DELETE", f"/api/admin/users/{name}")
    out.print(f"user {name} removed")
