"""`agentfarm config`: saved, reusable agent configs, from flags or a YAML/JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from agentfarm.cli import client, console

app = typer.Typer(no_args_is_help=True, help="Saved, reusable agent configs.")


@app.command("add")
def config_add(
    name: Annotated[str | None, typer.Argument(help="Config name (a slug).")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="YAML or JSON file.")] = None,
    repo: Annotated[str | None, typer.Option(help="Local path or git URL.")] = None,
    prompt: Annotated[str | None, typer.Option(help="The task.")] = None,
    base_branch: Annotated[str | None, typer.Option()] = None,
    agent: Annotated[
        str | None, typer.Option(help="claude (the default) | codex | command.")
    ] = None,
    command_argv: Annotated[
        list[str] | None,
        typer.Option(
            help="For --agent command: the program, then each argument, one per flag "
            "(repeatable, in order)."
        ),
    ] = None,
    command_prompt: Annotated[
        str | None,
        typer.Option(help="For --agent command: stdin (the default) | argument | none."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="For claude or codex, e.g. gpt-5-codex; default: its own.")
    ] = None,
    permission_mode: Annotated[str | None, typer.Option(help="claude only.")] = None,
    allowed_tool: Annotated[list[str] | None, typer.Option(help="claude only; repeatable.")] = None,
    disallowed_tool: Annotated[
        list[str] | None, typer.Option(help="claude only; repeatable.")
    ] = None,
    max_turns: Annotated[int | None, typer.Option(help="claude only.")] = None,
    append_system_prompt: Annotated[
        str | None, typer.Option(help="claude: system prompt; codex: developer instructions.")
    ] = None,
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
    as_json: console.JsonFlag = False,
) -> None:
    """Save a config, from flags or from a YAML/JSON file (flags override the file)."""
    body: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            console.fail(f"cannot read {file}: {exc}")
        if not isinstance(loaded, dict):
            console.fail(f"{file} must hold a mapping of config fields")
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
    if agent is not None:
        body["agent"] = agent
    if command_argv or command_prompt:
        section = dict(body.get("command") or {})
        if command_argv:
            section["argv"] = command_argv
        if command_prompt:
            section["prompt"] = command_prompt
        body["command"] = section
    if env:
        pairs = dict(item.split("=", 1) for item in env if "=" in item)
        if len(pairs) != len(env):
            console.fail("--env takes KEY=VALUE")
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
        console.fail("a config needs a name and --repo (or a file with both)")
    with client.Client() as c:
        created = c.post("/api/configs", json=body)
    if as_json:
        console.print_json(created)
    else:
        console.out.print(f"config {created['name']} saved (id {created['id']})")


@app.command("ls")
def config_ls(as_json: console.JsonFlag = False) -> None:
    """List saved configs."""
    with client.Client() as c:
        configs = c.get("/api/configs")
    if as_json:
        console.print_json(configs)
        return
    table = Table("name", "agent", "repo", "model", "backend", "prompt", box=None)
    for cfg in configs:
        table.add_row(
            cfg["name"],
            cfg.get("agent") or "claude",
            cfg["repo"],
            cfg.get("model") or "-",
            cfg["backend"]["type"],
            cfg["prompt"][:50],
        )
    console.out.print(table)


@app.command("show")
def config_show(key: str) -> None:
    """Show one config as JSON."""
    with client.Client() as c:
        console.print_json(c.get(f"/api/configs/{key}"))


@app.command("rm")
def config_rm(key: str) -> None:
    """Delete a config (its runs are kept)."""
    with client.Client() as c:
        c.request("DELETE", f"/api/configs/{key}")
    console.out.print(f"config {key} removed")
