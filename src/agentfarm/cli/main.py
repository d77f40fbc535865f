"""The `agentfarm` command line. Everything but `serve` and `token` talks to the API.

One module per command group (``secret``, ``user``, ``config``, ``forge``, ``pipeline``,
``notify``), the run commands in ``runs``, and the two commands of the server's host in
``server``."""

from __future__ import annotations

import sys

import typer

from agentfarm.cli import (
    client,
    config,
    console,
    forge,
    notify,
    pipeline,
    runs,
    secret,
    server,
    user,
)  # fmt: skip

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Run and watch coding agents.",
)
app.add_typer(secret.app, name="secret")
app.add_typer(config.app, name="config")
app.add_typer(user.app, name="user")
app.add_typer(forge.app, name="forge")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(notify.app, name="notify")
app.command()(server.serve)
app.command()(server.token)
app.command()(runs.run)
app.command("ls")(runs.list_runs)
app.command()(runs.logs)
app.command()(runs.stop)
app.command()(runs.resume)
app.command("rm")(runs.remove_run)
app.command()(runs.send)
app.command()(runs.interrupt)
app.command()(runs.show)
app.command()(runs.spend)


def main() -> None:
    try:
        app()
    except client.ClientError as exc:
        console.err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
