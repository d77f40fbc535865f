"""`make run` on a terminal asks for the first cockpit user when none exists."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfarm.store import Store
from agentfarm.store.users import Users
from agentfarm.web import pages


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
        await pages._first_user(users)
        assert [u.name for u in await users.list_users()] == ["alice"]
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
        await pages._first_user(users)
        assert await users.count_users() == 0
    finally:
        await store.close()
