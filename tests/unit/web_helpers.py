"""Helpers for the cockpit's unit tests: an in-process app with an API client and
cookie-carrying "browser" clients that can come from any address."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from agentfarm.backends.fake import FakeBackend
from agentfarm.web.app import create_app

from .conftest import AUTH, make_settings

PASSWORD = "correct horse battery"
CSRF_RE = re.compile(r'(?:name="csrf_token" value|data-csrf)="([^"]+)"')


@dataclass
class Cockpit:
    app: FastAPI
    api: httpx.AsyncClient

    def browser(self, address: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    async def add_user(self, name: str = "ada", password: str = PASSWORD) -> None:
        response = await self.api.post(
            "/api/admin/users", json={"name": name, "password": password}
        )
        assert response.status_code == 201, response.text


@asynccontextmanager
async def cockpit(
    data_dir: Path, backend: FakeBackend | None = None, **settings: object
) -> AsyncIterator[Cockpit]:
    app = create_app(
        make_settings(data_dir, **settings), backends={"local": backend or FakeBackend()}
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=AUTH
        ) as api:
            yield Cockpit(app, api)


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, "no CSRF field in the page"
    return found.group(1)


async def login(
    browser: httpx.AsyncClient, name: str = "ada", password: str = PASSWORD
) -> httpx.Response:
    form = await browser.get("/login")
    assert form.status_code == 200
    return await browser.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": csrf_of(form.text)},
    )


async def page_csrf(browser: httpx.AsyncClient, path: str = "/configs") -> str:
    response = await browser.get(path)
    assert response.status_code == 200, response.text
    return csrf_of(response.text)
