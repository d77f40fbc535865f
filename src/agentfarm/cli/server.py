"""`agentfarm serve` and `agentfarm token`: the two commands that run on the server's host
instead of talking to its API. `serve` builds the settings once, from the environment and its
flags, and hands them to the app; with `--first-run` on a terminal it also asks for the first
cockpit user (the app asks only when there is none)."""

from __future__ import annotations

import gc
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agentfarm.cli import console

if TYPE_CHECKING:
    from agentfarm.settings import Settings


def first_token(settings: Settings, *, show: bool) -> str | None:
    """Make sure the API token exists; return it only if this call created it and ``show``
    (`make run` on a terminal). Never on later starts: a server's output ends up in logs (a
    Kubernetes pod's, a journal), and the token is the farm's admin credential."""
    created = settings.token is None and not settings.token_path.exists()
    token = settings.api_token()
    return token if created and show else None


def ask_first_user() -> tuple[str, str] | None:
    """Ask on the terminal for the first user (`make run` on a TTY); None to skip."""
    print("No cockpit user exists yet. Create one now (Ctrl-D to skip).")
    try:
        name = input("user name [admin]: ").strip() or "admin"
        while True:
            password = getpass.getpass("password (8+ characters): ")
            if len(password) < 8:
                print("too short; use at least 8 characters")
            elif getpass.getpass("again: ") != password:
                print("the two passwords differ; try again")
            else:
                return name, password
    except (EOFError, KeyboardInterrupt):
        print("\nskipped: create one later with `agentfarm user add NAME`")
        return None


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address [AGENTFARM_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [AGENTFARM_PORT].")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory [AGENTFARM_DATA_DIR].")
    ] = None,
    first_run: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Start the control plane (API, event stream) in the foreground."""
    import uvicorn

    from agentfarm.settings import Settings
    from agentfarm.web.app import create_app

    try:
        settings = Settings.load(host=host, port=port, data_dir=data_dir)
    except ValueError as exc:
        console.fail(f"bad setting: {exc}")
    settings.ensure_dirs()
    token = first_token(settings, show=first_run and sys.stdout.isatty())
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{shown_host}:{settings.port}"
    console.out.print(f"agentfarm listening on [bold]{url}[/]  (API docs: {url}/docs)")
    if token is not None:
        console.out.print(f"API token (shown once): [bold]{token}[/]  (later: `agentfarm token`)")
    else:
        console.out.print("API token: `agentfarm token` prints it")
    console.out.print(f"data directory: {settings.data_dir}")
    if not settings.is_loopback():
        console.out.print("[yellow]listening beyond loopback: every request needs the token[/]")
    if first_run and not (
        settings.anthropic_api_key
        or settings.claude_code_oauth_token
        or settings.secrets_path.exists()
    ):
        console.out.print(
            "[yellow]no Claude credentials yet:[/] export CLAUDE_CODE_OAUTH_TOKEN (from "
            "`claude setup-token`) or ANTHROPIC_API_KEY before `make run`, or run "
            "`agentfarm secret set CLAUDE_CODE_OAUTH_TOKEN` once the server is up"
        )
    if first_run:
        console.out.print(
            f"cockpit: open {url} on a phone or desktop; the server says below if no user "
            "exists yet. Create one with `agentfarm user add NAME` in another terminal."
        )
    # On a terminal, the app asks for the first cockpit user when none exists.
    ask = ask_first_user if first_run and sys.stdin.isatty() else None
    app = create_app(settings, first_user=ask)
    tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=3,
        # X-Forwarded-* are honoured by the app itself, only from AGENTFARM_TRUSTED_PROXIES.
        proxy_headers=False,
    )


#: Collector thresholds of the server: (net container allocations before a young collection,
#: young collections before a middle one, middle ones before a full one is considered).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Make the cyclic garbage collector's full collections rare and short in the server.

    An event holds a few container objects for as long as the hub keeps it in a run's tail, so
    thousands of events a second promote thousands of objects to the oldest generation, and the
    collector walks the whole heap each time the promoted ones reach a quarter of it: measured
    under bench/event_ingest.py with 10 agents, half of the server's CPU time went to full
    collections. Freezing what exists at start (modules, the app, pydantic's and FastAPI's
    schemas: never garbage) takes it out of every walk, and larger thresholds make
    collections rarer; cyclic garbage (few objects: the store and the hub drop events by
    reference count) waits a little longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def token() -> None:
    """Print the API token (from AGENTFARM_TOKEN or the data directory)."""
    from agentfarm.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    sys.stdout.write(settings.api_token() + "\n")
