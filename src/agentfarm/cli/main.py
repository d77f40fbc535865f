"""The `agentfarm` command line. Everything but `serve` and `token` talks to the API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from agentfarm.cli.client import Client, ClientError
from agentfarm.cli.render import STATUS_STYLE, event_line
from agentfarm.domain.present import fmt_cost

if TYPE_CHECKING:
    from agentfarm.settings import Settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Run and watch coding agents.",
)
secret_app = typer.Typer(no_args_is_help=True, help="Credentials kept by the server (0600).")
config_app = typer.Typer(no_args_is_help=True, help="Saved, reusable agent configs.")
app.add_typer(secret_app, name="secret")
app.add_typer(config_app, name="config")
user_app = typer.Typer(no_args_is_help=True, help="Cockpit users (password logins).")
app.add_typer(user_app, name="user")

out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def client() -> Client:
    return Client()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


# --- server --------------------------------------------------------------------------------
def first_token(settings: Settings, *, show: bool) -> str | None:
    """Make sure the API token exists; return it only if this call created it and ``show``
    (`make run` on a terminal). Never on later starts: a server's output ends up in logs (a
    Kubernetes pod's, a journal), and the token is the farm's admin credential."""
    created = settings.token is None and not settings.token_path.exists()
    token = settings.api_token()
    return token if created and show else None


@app.command()
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

    for name, value in (("HOST", host), ("PORT", port), ("DATA_DIR", data_dir)):
        if value is not None:
            os.environ[f"AGENTFARM_{name}"] = str(value)
    try:
        settings = Settings()
    except ValueError as exc:
        fail(f"bad setting: {exc}")
    settings.ensure_dirs()
    token = first_token(settings, show=first_run and sys.stdout.isatty())
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{shown_host}:{settings.port}"
    out.print(f"agentfarm listening on [bold]{url}[/]  (API docs: {url}/docs)")
    if token is not None:
        out.print(f"API token (shown once): [bold]{token}[/]  (later: `agentfarm token`)")
    else:
        out.print("API token: `agentfarm token` prints it")
    out.print(f"data directory: {settings.data_dir}")
    if not settings.is_loopback():
        out.print("[yellow]listening beyond loopback: every request needs the token[/]")
    if first_run and not (
        settings.anthropic_api_key
        or settings.claude_code_oauth_token
        or settings.secrets_path.exists()
    ):
        out.print(
            "[yellow]no Claude credentials yet:[/] export CLAUDE_CODE_OAUTH_TOKEN (from "
            "`claude setup-token`) or ANTHROPIC_API_KEY before `make run`, or run "
            "`agentfarm secret set CLAUDE_CODE_OAUTH_TOKEN` once the server is up"
        )
    if first_run:
        # On a terminal, the server asks for the first cockpit user when none exists.
        os.environ["AGENTFARM_FIRST_RUN_PROMPT"] = "1"
        out.print(
            f"cockpit: open {url} on a phone or desktop; the server says below if no user "
            "exists yet. Create one with `agentfarm user add NAME` in another terminal."
        )
    uvicorn.run(
        "agentfarm.web.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=3,
        # X-Forwarded-* are honoured by the app itself, only from AGENTFARM_TRUSTED_PROXIES.
        proxy_headers=False,
    )


@app.command()
def token() -> None:
    """Print the API token (from AGENTFARM_TOKEN or the data directory)."""
    from agentfarm.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    sys.stdout.write(settings.api_token() + "\n")


# --- secrets -------------------------------------------------------------------------------
@secret_app.command("set")
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
        fail("empty value; pass it on stdin or with --value")
    with client() as c:
        c.request("PUT", f"/api/secrets/{name}", json={"value": value})
    out.print(f"secret {name} stored")


@secret_app.command("ls")
def secret_ls(as_json: JsonFlag = False) -> None:
    """List secret names (never values)."""
    with client() as c:
        names = c.get("/api/secrets")["names"]
    if as_json:
        print_json(names)
    else:
        for name in names:
            out.print(name)


@secret_app.command("rm")
def secret_rm(name: str) -> None:
    """Delete a secret."""
    with client() as c:
        c.request("DELETE", f"/api/secrets/{name}")
    out.print(f"secret {name} removed")


# --- users ---------------------------------------------------------------------------------
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


@user_app.command("add")
def user_add(
    name: str,
    admin: Annotated[
        bool, typer.Option("--admin", help="Administers users and sees every API token.")
    ] = False,
) -> None:
    """Create a cockpit user; the password is prompted for (or read from stdin). The first
    user is an admin."""
    password = read_password(name)
    with client() as c:
        made = c.post("/api/admin/users", json={"name": name, "password": password, "admin": admin})
    role = "admin" if made and made.get("admin") else "user"
    out.print(f"{role} {name} created: sign in at {c.url}/login", highlight=False)


@user_app.command("passwd")
def user_passwd(name: str) -> None:
    """Set a user's password (signs them out everywhere)."""
    password = read_password(name)
    with client() as c:
        c.request("PUT", f"/api/admin/users/{name}/password", json={"password": password})
    out.print(f"password of {name} changed")


@user_app.command("role")
def user_role(
    name: str,
    admin: Annotated[
        bool, typer.Option("--admin/--no-admin", help="Make the user an admin, or not.")
    ],
) -> None:
    """Make a user an admin (`--admin`) or an ordinary user (`--no-admin`)."""
    with client() as c:
        c.request("PUT", f"/api/admin/users/{name}/role", json={"admin": admin})
    out.print(f"{name} is {'an admin' if admin else 'an ordinary user'} now", highlight=False)


@user_app.command("ls")
def user_ls(as_json: JsonFlag = False) -> None:
    """List cockpit users."""
    with client() as c:
        users = c.get("/api/admin/users")
    if as_json:
        print_json(users)
        return
    for user in users:
        role = ", admin" if user.get("admin") else ""
        out.print(f"{user['name']}  (since {user['created_at'][:10]}{role})", highlight=False)


@user_app.command("rm")
def user_rm(name: str) -> None:
    """Delete a user and end their sessions."""
    with client() as c:
        c.request("DELETE", f"/api/admin/users/{name}")
    out.print(f"user {name} removed")


# --- configs -------------------------------------------------------------------------------
@config_app.command("add")
def config_add(
    name: Annotated[str | None, typer.Argument(help="Config name (a slug).")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="YAML or JSON file.")] = None,
    repo: Annotated[str | None, typer.Option(help="Local path or git URL.")] = None,
    prompt: Annotated[str | None, typer.Option(help="The task.")] = None,
    base_branch: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    permission_mode: Annotated[str | None, typer.Option()] = None,
    allowed_tool: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    disallowed_tool: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    max_turns: Annotated[int | None, typer.Option()] = None,
    append_system_prompt: Annotated[str | None, typer.Option()] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    network: Annotated[
        str | None, typer.Option(help="none | allowlist (the default) | open.")
    ] = None,
    egress: Annotated[
        list[str] | None,
        typer.Option(help="Host the agent may reach: host, host:port or @pypi; repeatable."),
    ] = None,
    memory_mb: Annotated[int | None, typer.Option()] = None,
    cpus: Annotated[float | None, typer.Option()] = None,
    no_sandbox: Annotated[bool, typer.Option(help="Run unsandboxed (explicit opt-out).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Save a config, from flags or from a YAML/JSON file (flags override the file)."""
    body: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            fail(f"cannot read {file}: {exc}")
        if not isinstance(loaded, dict):
            fail(f"{file} must hold a mapping of config fields")
        body.update(loaded)
    flags = {
        "name": name,
        "repo": str(Path(repo).resolve()) if repo and Path(repo).exists() else repo,
        "prompt": prompt,
        "base_branch": base_branch,
        "model": model,
        "permission_mode": permission_mode,
        "allowed_tools": allowed_tool,
        "disallowed_tools": disallowed_tool,
        "max_turns": max_turns,
        "append_system_prompt": append_system_prompt,
    }
    body.update({k: v for k, v in flags.items() if v is not None})
    if env:
        pairs = dict(item.split("=", 1) for item in env if "=" in item)
        if len(pairs) != len(env):
            fail("--env takes KEY=VALUE")
        body["env"] = {**body.get("env", {}), **pairs}
    given: tuple[tuple[str, Any], ...] = (
        ("network", network),
        ("egress", egress),
        ("memory_mb", memory_mb),
        ("cpus", cpus),
    )
    flagged = {key: val for key, val in given if val is not None and val != []}
    if no_sandbox:
        flagged["mode"] = "none"
    if flagged:  # into `backend` when the file has today's shape, else beside it as before
        target = body["backend"] if isinstance(body.get("backend"), dict) else body
        target["sandbox"] = {**(target.get("sandbox") or {}), **flagged}
    if "name" not in body or "repo" not in body:
        fail("a config needs a name and --repo (or a file with both)")
    with client() as c:
        created = c.post("/api/configs", json=body)
    if as_json:
        print_json(created)
    else:
        out.print(f"config {created['name']} saved (id {created['id']})")


@config_app.command("ls")
def config_ls(as_json: JsonFlag = False) -> None:
    """List saved configs."""
    with client() as c:
        configs = c.get("/api/configs")
    if as_json:
        print_json(configs)
        return
    table = Table("name", "repo", "model", "backend", "prompt", box=None)
    for cfg in configs:
        table.add_row(
            cfg["name"],
            cfg["repo"],
            cfg.get("model") or "-",
            cfg["backend"]["type"],
            cfg["prompt"][:50],
        )
    out.print(table)


@config_app.command("show")
def config_show(key: str) -> None:
    """Show one config as JSON."""
    with client() as c:
        print_json(c.get(f"/api/configs/{key}"))


@config_app.command("rm")
def config_rm(key: str) -> None:
    """Delete a config (its runs are kept)."""
    with client() as c:
        c.request("DELETE", f"/api/configs/{key}")
    out.print(f"config {key} removed")


# --- runs ----------------------------------------------------------------------------------
def follow(c: Client, run_id: str, *, as_json: bool) -> str:
    """Print events until the run ends; returns the final status."""
    status = "?"
    for event in c.stream_events(run_id):
        if event["type"] == "run.status":
            status = event["data"].get("status", status)
        if as_json:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
            continue
        line = event_line(event)
        if line is not None:
            out.print(line, highlight=False)
    return status


@app.command()
def run(
    config: Annotated[str, typer.Argument(help="Config name or id.")],
    prompt: Annotated[str | None, typer.Option(help="Override the config's prompt.")] = None,
    detach: Annotated[bool, typer.Option(help="Print the run id and return.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Launch a run of a saved config and follow it (Ctrl-C detaches)."""
    body: dict[str, Any] = {"config": config}
    if prompt is not None:
        body["prompt"] = prompt
    with client() as c:
        created = c.post("/api/runs", json=body)
        run_id = created["id"]
        if detach:
            print_json(created) if as_json else out.print(run_id)
            return
        if not as_json:
            out.print(f"run [bold]{run_id}[/] on branch {created.get('branch')}", highlight=False)
        try:
            status = follow(c, run_id, as_json=as_json)
        except KeyboardInterrupt:
            err.print(f"detached; the run goes on. Stop it with `agentfarm stop {run_id}`")
            raise typer.Exit(130) from None
    if status in ("failed", "lost"):
        raise typer.Exit(1)


@app.command("ls")
def list_runs(
    status: Annotated[list[str] | None, typer.Option(help="Filter, repeatable.")] = None,
    limit: Annotated[int, typer.Option()] = 30,
    as_json: JsonFlag = False,
) -> None:
    """List runs, newest first."""
    with client() as c:
        runs = c.get("/api/runs", params={"status": status or [], "limit": limit})
    if as_json:
        print_json(runs)
        return
    table = Table("id", "status", "config", "branch", "cost", "turns", "created", box=None)
    for r in runs:
        style = STATUS_STYLE.get(r["status"], "white")
        table.add_row(
            r["id"],
            f"[{style}]{r['status']}[/]",
            r.get("config_name") or "-",
            r.get("branch") or "-",
            fmt_cost(r.get("cost_usd")),
            str(r.get("num_turns") or "-"),
            r["created_at"][:19].replace("T", " "),
        )
    out.print(table)


@app.command()
def logs(
    run_id: str,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Stream until it ends.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show a run's events (readable, or JSON lines with --json)."""
    with client() as c:
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
                    line = event_line(event)
                    if line is not None:
                        out.print(line, highlight=False)
            if len(events) < 5000:
                break
            after = events[-1]["seq"]


@app.command()
def stop(run_id: str, as_json: JsonFlag = False) -> None:
    """Stop a run: interrupt, SIGTERM, then SIGKILL after the grace period."""
    with client() as c:
        result = c.post(f"/api/runs/{run_id}/stop")
    if as_json:
        print_json(result)
    else:
        out.print(f"stopping run {run_id}")


@app.command("rm")
def remove_run(run_id: str) -> None:
    """Delete an ended run: its files, row and events (its branch stays in the repository)."""
    with client() as c:
        c.delete(f"/api/runs/{run_id}")
    out.print(f"run {run_id} removed", highlight=False)


@app.command()
def send(run_id: str, text: str) -> None:
    """Send a follow-up message to a running agent."""
    with client() as c:
        c.post(f"/api/runs/{run_id}/messages", json={"text": text})
    out.print("sent")


@app.command()
def show(run_id: str) -> None:
    """Show one run as JSON."""
    with client() as c:
        print_json(c.get(f"/api/runs/{run_id}"))


def main() -> None:
    try:
        app()
    except ClientError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
