"""`agentfarm forge`: the forges the pipeline watches (GitHub, Forgejo, Gitea).

The token goes in on stdin (`--token-stdin`) or is stored beforehand with `agentfarm secret
set`; it is never an argument, which other users of the machine could read."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agentfarm.cli import client, console

app = typer.Typer(no_args_is_help=True, help="Forges whose labeled issues become runs.")


def _read_token() -> str:
    tty = sys.stdin.isatty()
    value = str(typer.prompt("forge token", hide_input=True) if tty else sys.stdin.read()).strip()
    if not value:
        console.fail(
            "no token on stdin: pipe it in, e.g. `agentfarm forge add ... --token-stdin "
            "< token.txt`"
        )
    return value


@app.command("add")
def forge_add(
    name: Annotated[str, typer.Argument(help="Forge name (a slug); the webhook URL ends in it.")],
    kind: Annotated[str, typer.Option(help="github | forgejo | gitea.")],
    url: Annotated[
        str,
        typer.Option(
            help="The REST API's root: https://api.github.com, https://HOST/api/v3 (GitHub "
            "Enterprise) or https://HOST/api/v1 (Forgejo/Gitea)."
        ),
    ],
    token_secret: Annotated[
        str, typer.Option(help="Name of the stored secret holding the forge token.")
    ],
    repo: Annotated[
        list[str], typer.Option(help="A repository (owner/name) it may act on; repeatable.")
    ],
    token_stdin: Annotated[
        bool, typer.Option(help="Read the token from stdin and store it under --token-secret.")
    ] = False,
    label: Annotated[str | None, typer.Option(help="Trigger label (default agentfarm).")] = None,
    config: Annotated[
        str | None, typer.Option(help="Config its runs use (default issue-implementer).")
    ] = None,
    poll: Annotated[
        int | None, typer.Option(help="Also poll every N seconds (0: webhooks only).")
    ] = None,
    draft: Annotated[bool, typer.Option(help="Open pull requests as drafts.")] = False,
    closes: Annotated[
        bool, typer.Option("--closes/--no-closes", help="Pull requests say `Closes #N`.")
    ] = True,
    stop_on_unlabel: Annotated[bool, typer.Option(help="Removing the label stops the run.")] = True,
    mention: Annotated[
        str | None, typer.Option(help="Mention that starts a follow-up (default @agentfarm).")
    ] = None,
    as_json: console.JsonFlag = False,
) -> None:
    """Set up a forge; prints the webhook URL and secret to paste into it (shown once)."""
    body: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "base_url": url,
        "token_secret": token_secret,
        "repos": repo,
        "draft": draft,
        "closes_issue": closes,
        "stop_on_unlabel": stop_on_unlabel,
    }
    optional = {"label": label, "config": config, "poll_seconds": poll, "mention": mention}
    body.update({k: v for k, v in optional.items() if v is not None})
    if token_stdin:
        body["token"] = _read_token()
    with client.Client() as c:
        created = c.post("/api/forges", json=body)
    if as_json:
        console.print_json(created)
        return
    console.out.print(f"forge {created['name']} added (config {created['config']})")
    console.out.print("Paste into the forge's webhook settings (the secret is not shown again):")
    console.out.print(Text(f"  URL:    {created['webhook_url']}"))
    console.out.print(Text(f"  secret: {created['webhook_secret']}"))
    console.out.print(
        "  content type application/json; events: issues, issue comments, pull requests, "
        "statuses (and check runs on GitHub)"
    )


@app.command("ls")
def forge_ls(as_json: console.JsonFlag = False) -> None:
    """List forges (never their secrets)."""
    with client.Client() as c:
        forges = c.get("/api/forges")
    if as_json:
        console.print_json(forges)
        return
    table = Table("name", "kind", "api", "label", "repos", "config", "poll", box=None)
    for forge in forges:
        table.add_row(
            Text(forge["name"]),
            Text(forge["kind"]),
            Text(forge["base_url"]),
            Text(forge["label"]),
            Text(", ".join(forge["repos"])),
            Text(forge.get("config") or "-"),
            Text(f"{forge['poll_seconds']}s" if forge["poll_seconds"] else "webhooks"),
        )
    console.out.print(table)


@app.command("show")
def forge_show(name: str) -> None:
    """Show one forge as JSON (with its webhook URL; no secrets)."""
    with client.Client() as c:
        console.print_json(c.get(f"/api/forges/{name}"))


@app.command("test")
def forge_test(name: str) -> None:
    """Call the forge with the stored token and say whether it works."""
    with client.Client() as c:
        answer = c.post(f"/api/forges/{name}/test")
    if not answer["ok"]:
        console.fail(escape(answer["message"]))
    console.out.print(Text(answer["message"]))


@app.command("rm")
def forge_rm(
    name: str,
    force: Annotated[bool, typer.Option(help="Stop its active attempts first.")] = False,
) -> None:
    """Remove a forge and its webhook secret (the token secret stays: it may be shared)."""
    with client.Client() as c:
        c.delete(f"/api/forges/{name}", params={"force": "true"} if force else None)
    console.out.print(f"forge {name} removed")
