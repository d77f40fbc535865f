"""`make run` on a terminal asks for the first cockpit user when none exists: `agentfarm
serve` owns the prompt, the app asks it only when the user table is empty."""

from __future__ import annotations

import gc
import getpass
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfarm.cli import server
from agentfarm.store import Store
from agentfarm.store.users import Users
from agentfarm.web.pages import appstate

TUNE_GC = server.tune_gc


@pytest.fixture(autouse=True)
def untuned_gc(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``serve`` tunes the process's collector (``server.tune_gc``): not the test process's."""
    calls: list[str] = []
    monkeypatch.setattr(server, "tune_gc", lambda: calls.append("tuned"))
    return calls


def answers(monkeypatch: pytest.MonkeyPatch, typed: list[str], secret: list[str]) -> None:
    typed_iter: Iterator[str] = iter(typed)
    secret_iter: Iterator[str] = iter(secret)
    monkeypatch.setattr("builtins.input", lambda _prompt="": next(typed_iter))
    monkeypatch.setattr(getpass, "getpass", lambda _prompt="": next(secret_iter))


async def test_first_user_is_created_from_the_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers(monkeypatch, ["alice"], ["short", "long-enough-1", "mismatch-99", "long-enough-1",
                                     "long-enough-1"])  # fmt: skip
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        users = Users(store.database)
        await appstate.create_first_user(users, server.ask_first_user)
        assert [(u.name, u.is_admin) for u in await users.list_users()] == [("alice", True)]
    finally:
        await store.close()


async def test_first_user_prompt_can_be_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eof(_prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr("builtins.input", eof)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        users = Users(store.database)
        await appstate.create_first_user(users, server.ask_first_user)
        assert await users.count_users() == 0
    finally:
        await store.close()


def serve_output(monkeypatch: pytest.MonkeyPatch, data_dir: Path, *args: str) -> str:
    import uvicorn
    from typer.testing import CliRunner

    from agentfarm.cli.main import app

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.delenv("AGENTFARM_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(data_dir), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_serve_passes_its_settings_to_the_app_without_touching_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: serve wrote AGENTFARM_HOST/PORT/DATA_DIR and AGENTFARM_FIRST_RUN_PROMPT into
    # os.environ for the app factory that uvicorn called to find.
    import os

    import uvicorn
    from fastapi import FastAPI
    from typer.testing import CliRunner

    from agentfarm.cli.main import app

    served: list[tuple[FastAPI, dict[str, object]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **k: served.append((target, k)))
    tuned: list[str] = []
    monkeypatch.setattr(server, "tune_gc", lambda: tuned.append(f"before {len(served)} runs"))
    monkeypatch.delenv("AGENTFARM_TOKEN", raising=False)
    monkeypatch.setenv("AGENTFARM_HOST", "127.0.0.2")
    before = dict(os.environ)
    args = ["serve", "--data-dir", str(tmp_path), "--port", "18099", "--first-run"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert dict(os.environ) == before
    [(target, options)] = served
    settings = target.state.settings
    assert (settings.data_dir, settings.port, settings.host) == (tmp_path, 18099, "127.0.0.2")
    assert (options["host"], options["port"]) == ("127.0.0.2", 18099)
    assert tuned == ["before 0 runs"]


def test_the_servers_collector_leaves_its_start_heap_alone_and_runs_less_often() -> None:
    before = gc.get_threshold()
    try:
        TUNE_GC()
        assert gc.get_threshold() == server.GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # the modules and schemas imported so far
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_serve_rejects_a_bad_flag_value_as_a_bad_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from agentfarm.cli.main import app

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("started"))
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path), "--port", "0"])
    assert result.exit_code == 1
    assert "bad setting" in result.output


def test_serve_never_prints_the_api_token_without_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pod's or a service's output goes to logs: the token must not land there.
    first = serve_output(monkeypatch, tmp_path, "--first-run")
    token = (tmp_path / "token").read_text().strip()
    assert token not in first and "agentfarm token" in first
    assert token not in serve_output(monkeypatch, tmp_path)


def test_the_token_is_shown_once_when_make_run_creates_it_on_a_terminal(tmp_path: Path) -> None:
    from agentfarm.cli.server import first_token
    from agentfarm.settings import Settings

    settings = Settings.model_validate({"data_dir": tmp_path})
    assert first_token(settings, show=False) is None  # created, not on a terminal
    assert (tmp_path / "token").exists()
    assert first_token(settings, show=True) is None  # a later start: not again
    fresh = Settings.model_validate({"data_dir": tmp_path / "fresh"})
    shown = first_token(fresh, show=True)
    assert shown is not None and shown == (tmp_path / "fresh" / "token").read_text().strip()
    given = Settings.model_validate({"data_dir": tmp_path / "env", "token": "from-the-env-123"})
    assert first_token(given, show=True) is None  # set by the operator: nothing to show
