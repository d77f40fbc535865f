"""Unit-test fixtures: the API in-process on the fake backend (no real agent)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agentfarm.backends.fake import FakeBackend
from agentfarm.settings import Settings
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
