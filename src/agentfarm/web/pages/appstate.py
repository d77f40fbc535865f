"""The cockpit's per-app state, made once the store is open: the users, the CSRF key, the
login limiter; warnings about an unsafe set-up; and the first user when there is none."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import FastAPI

from agentfarm.domain import errors
from agentfarm.settings import Settings, read_or_create_token
from agentfarm.store import Store
from agentfarm.store.users import Users
from agentfarm.web import identity, loginlimit
from agentfarm.web.pages import shell

log = logging.getLogger(__name__)

#: Asks someone for the first cockpit user: ``(name, password)``, or None to skip. It may block
#: (a terminal prompt): it runs in a thread.
FirstUserPrompt = Callable[[], tuple[str, str] | None]


async def startup(
    app: FastAPI, store: Store, settings: Settings, first_user: FirstUserPrompt | None = None
) -> None:
    """Called by the app's lifespan once the store is open. With ``first_user`` (`agentfarm
    serve --first-run` on a terminal), an empty user table is filled by asking it."""
    shell.check_assets()
    app.state.users = Users(store.database)
    app.state.web_key = (
        await asyncio.to_thread(read_or_create_token, settings.data_dir / "cookie-key")
    ).encode()
    app.state.login_limiter = loginlimit.LoginLimiter(
        settings.login_failures_per_user, settings.login_failures_per_address
    )
    risk = identity.forward_auth_risk(settings)
    if risk:
        log.warning("%s", risk)
    if await app.state.users.count_users() == 0:
        if first_user is not None:
            await create_first_user(app.state.users, first_user)
        else:
            log.warning(
                "no cockpit user yet: create one with `agentfarm user add NAME` "
                "(the API token works meanwhile)"
            )


async def create_first_user(users: Users, ask: FirstUserPrompt) -> None:
    answer = await asyncio.to_thread(ask)
    if answer is None:
        return
    name, password = answer
    try:  # the first user of an empty database is an admin
        await users.create_user(name, await identity.hash_password(password))
    except errors.AgentfarmError as exc:
        log.warning("could not create user %s: %s", name, exc)
        return
    log.info("created cockpit user %s", name)
