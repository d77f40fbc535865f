"""Unit-test fixtures: the API in-process on the fake backend (no real agent), and a
supervisor on the fake backend (``store``, ``backend``, ``supervisors``). A test module shapes
the supervisor by overriding ``backend_script``, ``adapters``, ``supervisor_settings`` or
``notifier``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agentfarm.agents.base import AgentAdapter
from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.backends import fake
from agentfarm.backends.fake import FakeBackend
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import notify
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web.app import create_app

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_settings(data_dir: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "token": TOKEN,
        "anthropic_api_key": "sk-test-secret-value-123",
        "stop_grace_seconds": 0.5,
        "claude_bin": "/bin/true",
        # httpx's ASGI transport sends `Host: testserver`; the allow-list's own tests omit it.
        "allowed_hosts": "testserver",
    }
    values.update(extra)
    return Settings.model_validate(values)


@asynccontextmanager
async def serve_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=AUTH
        ) as client:
            yield client


AppFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
async def fake_backend() -> AsyncIterator[FakeBackend]:
    backend = FakeBackend()
    yield backend
    await backend.shutdown()


@pytest.fixture
def app_client(tmp_path: Path, fake_backend: FakeBackend) -> AppFactory:
    """``async with app_client() as client``: a fresh app on a shared data dir, with a fresh
    backend object over the same fake agents (as a restarted server has)."""

    def factory(**settings: object) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        app = create_app(
            make_settings(tmp_path / "data", **settings),
            backends={"local": fake_backend.restarted()},
        )
        return serve_app(app)

    return factory


# --- a supervisor on the fake backend ----------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "data" / "agentfarm.db")
    yield store
    await store.close()


@pytest.fixture
def backend_script() -> fake.Script:
    """What the fake agents do (override in a module)."""
    return fake.claude_like_script


@pytest.fixture
async def backend(backend_script: fake.Script) -> AsyncIterator[FakeBackend]:
    backend = FakeBackend(backend_script)
    yield backend
    await backend.shutdown()


@pytest.fixture
def adapters() -> dict[str, AgentAdapter]:
    """The supervisor's agent adapters (override in a module)."""
    return {"claude": ClaudeAdapter()}


@pytest.fixture
def supervisor_settings() -> dict[str, object]:
    """Settings every supervisor of a module has, under a test's own (override in a module)."""
    return {}


@pytest.fixture
def notifier() -> Callable[[Settings], notify.Notifier] | None:
    """Makes the supervisor's notifier from its settings; None: the default (override)."""
    return None


@pytest.fixture
async def supervisors(
    tmp_path: Path,
    store: Store,
    backend: FakeBackend,
    adapters: dict[str, AgentAdapter],
    supervisor_settings: dict[str, object],
    notifier: Callable[[Settings], notify.Notifier] | None,
) -> AsyncIterator[Callable[..., Supervisor]]:
    """``supervisors(on=None, **settings)``: a new supervisor (a server start) on the same
    store, on ``backend`` or ``on`` (a restarted object over the same agents); closed after
    the test."""
    made: list[Supervisor] = []

    def make(on: FakeBackend | None = None, **extra: object) -> Supervisor:
        settings = make_settings(tmp_path / "data", **{**supervisor_settings, **extra})
        sup = Supervisor(
            settings, store, SecretStore(settings.secrets_path), {"local": on or backend},
            adapters, notifier=notifier(settings) if notifier else None,
        )  # fmt: skip
        made.append(sup)
        return sup

    yield make
    for sup in made:
        await sup.close()
