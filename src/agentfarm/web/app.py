"""The application factory: settings in, a ready FastAPI app out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from agentfarm import __version__
from agentfarm.agents.base import AgentAdapter
from agentfarm.backends.base import Backend
from agentfarm.pipeline.service import Pipeline
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.pipeline import PipelineStore
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor.runs import Supervisor
from agentfarm.web import (
    api,
    api_forges,
    apidocs,
    notifications,
    openapi,
    orchestration,
    pages,
    sse,
    tokens,
    webhooks,
)
from agentfarm.web import errors as web_errors
from agentfarm.web.bodylimit import BodySizeLimit
from agentfarm.web.hosts import HostAllowList
from agentfarm.web.pages import live_runs

log = logging.getLogger(__name__)


class _App(FastAPI):
    """The app, keeping the server's own ``send`` in each request's scope: a live stream may
    write its events to the socket past the layers in between (``sse.EventStream.push``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[sse.SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def default_adapters() -> dict[str, AgentAdapter]:
    from agentfarm.agents.claude import ClaudeAdapter
    from agentfarm.agents.codex import CodexAdapter
    from agentfarm.agents.command import CommandAdapter

    return {"claude": ClaudeAdapter(), "codex": CodexAdapter(), "command": CommandAdapter()}


def default_backends(settings: Settings) -> dict[str, Backend]:
    from agentfarm.backends.local import LocalBackend, hostinfo

    backends: dict[str, Backend] = {"local": LocalBackend(settings)}
    for line in hostinfo.startup_lines():  # without root: no sandbox uid, maybe no limits
        log.warning("local backend: %s", line)
    try:
        from agentfarm.backends.kubernetes.backend import KubernetesBackend
    except ImportError:  # the optional `kubernetes` extra is not installed
        return backends
    backends["kubernetes"] = KubernetesBackend(settings)
    return backends


def create_app(
    settings: Settings | None = None,
    *,
    backends: Mapping[str, Backend] | None = None,
    adapters: Mapping[str, AgentAdapter] | None = None,
    first_user: pages.appstate.FirstUserPrompt | None = None,
) -> FastAPI:
    """``first_user`` asks for the first cockpit user when there is none (`agentfarm serve
    --first-run` on a terminal passes its prompt)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        app.state.api_token = settings.api_token()
        store = await Store.open(settings.db_path)
        secrets = SecretStore(settings.secrets_path)
        chosen_adapters = dict(adapters) if adapters is not None else default_adapters()
        chosen = dict(backends) if backends is not None else default_backends(settings)
        supervisor = Supervisor(settings, store, secrets, chosen, chosen_adapters)
        app.state.store, app.state.secrets, app.state.supervisor = store, secrets, supervisor
        await pages.appstate.startup(app, store, settings, first_user)
        pipeline_store = PipelineStore(store.database)
        pipeline = Pipeline(settings, store, pipeline_store, secrets, supervisor)
        app.state.pipeline_store, app.state.pipeline = pipeline_store, pipeline
        app.state.live_runs = live_runs.LiveRuns(supervisor)
        for backend in chosen.values():
            starter = getattr(backend, "astart", None)
            if starter is not None:
                await starter()
        await supervisor.start()
        await pipeline.start()

        # On uvicorn's stop the live streams end at once (their runs go on; browsers resume).
        watcher = asyncio.create_task(sse.watch_shutdown(supervisor.hub.close))
        try:
            yield
        finally:
            watcher.cancel()
            await pipeline.close()
            await supervisor.close()
            for backend in chosen.values():
                closer = getattr(backend, "aclose", None)
                if closer is not None:
                    await closer()
            await store.close()

    public_docs = settings.public_api_docs
    app = _App(
        title="agentfarm",
        version=__version__,
        summary="Run autonomous coding agents in sandboxes; watch them live.",
        lifespan=lifespan,
        # Unless made public, the schema and its pages are served by `apidocs`, behind auth.
        openapi_url=apidocs.OPENAPI_URL if public_docs else None,
        docs_url="/docs" if public_docs else None,
        redoc_url="/redoc" if public_docs else None,
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimit)
    app.add_middleware(HostAllowList, settings=settings)  # outermost: before anything reads
    web_errors.install(app)
    if not public_docs:
        apidocs.install(app)
    app.include_router(api.public)
    app.include_router(webhooks.router)
    app.include_router(api.router)
    app.include_router(api_forges.router)
    app.include_router(tokens.router)
    app.include_router(orchestration.router)
    app.include_router(notifications.router)
    pages.install(app)
    openapi.install(app)
    return app
