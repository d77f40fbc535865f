"""Setting up forges: the one place that writes a forge together with its two secrets and the
config its runs use. The API, the cockpit and (through the API) the CLI all go through it.

A forge's token lives in the secret store under the name the forge gives (it may be shared
with other forges or with runs, so removing a forge leaves it); its webhook secret lives under
:func:`domain.pipeline.webhook_secret_name` and belongs to the forge alone. Neither is ever
returned, except a webhook secret once, at the moment it is made.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import secrets as pysecrets

from pydantic import SecretStr

from agentfarm.domain import errors, models
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import forges, prompt
from agentfarm.pipeline.forges import errors as forge_errors
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.pipeline import PipelineStore
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import credentials

#: The config a forge's runs use unless it names another; made on first use.
DEFAULT_CONFIG = "issue-implementer"
#: Webhook secrets' names start with this (``domain.pipeline.webhook_secret_name``).
WEBHOOK_SECRET_PREFIX = domain.webhook_secret_name("")
#: How a token test's answer starts when the token works.
TOKEN_WORKS = "token works"  # noqa: S105 (words, not a token)
#: One try when testing a token: a person is waiting for the answer.
TEST_RETRY = forges.RetryPolicy(attempts=1)


def default_instructions() -> str:
    """The standing instructions a new ``issue-implementer`` config starts with."""
    return prompt.DEFAULT_INSTRUCTIONS.strip()  # as a config stores its prompt


def web_root(forge: domain.Forge) -> str:
    """Where people (and git) reach the forge: the API's origin, except that GitHub.com's
    API lives on its own host."""
    host = forge.git_host
    return "https://github.com" if host == "https://api.github.com" else host


def issue_url(forge: domain.Forge, repo: str, number: int) -> str:
    return f"{web_root(forge)}/{repo}/issues/{number}"


def new_webhook_secret() -> str:
    return pysecrets.token_urlsafe(32)


class ForgeAdmin:
    def __init__(
        self,
        pipeline_store: PipelineStore,
        store: Store,
        secrets: SecretStore,
        settings: Settings | None = None,
    ) -> None:
        self._forges = pipeline_store
        self._store = store
        self._secrets = secrets
        self._settings = settings or Settings()

    async def _token(self, name: str) -> str | None:
        """The stored token, else the server's environment's (GITHUB_TOKEN, FORGEJO_TOKEN)."""
        stored = await asyncio.to_thread(self._secrets.all)
        return credentials.named_token(self._settings, stored, name)

    # --- reading -----------------------------------------------------------------------------
    async def list(self) -> list[domain.Forge]:
        return await self._forges.list_forges()

    async def get(self, name: str) -> domain.Forge:
        return await self._forges.get_forge(name)

    # --- writing -----------------------------------------------------------------------------
    async def add(self, body: domain.ForgeIn) -> tuple[domain.Forge, str]:
        """Store the forge and its secrets; the webhook secret is returned, this once."""
        try:
            await self._forges.get_forge(body.name)
        except errors.NotFoundError:
            pass
        else:
            raise errors.ConflictError(
                f"a forge named {body.name!r} already exists: choose another name, or change "
                f"it with `PUT /api/forges/{body.name}`"
            )
        settings = domain.ForgeSettings.model_validate(
            body.model_dump(include=set(domain.ForgeSettings.model_fields))
        )
        settings = await self._check(settings, body.token)
        secret = body.webhook_secret.get_secret_value() if body.webhook_secret else None
        secret = secret or new_webhook_secret()
        _check_webhook_secret(secret)
        forge = domain.Forge(
            **settings.model_dump(),
            name=body.name,
            webhook_secret_name=domain.webhook_secret_name(body.name),
        )
        await self._store_token(settings.token_secret, body.token)
        await self._ensure_config(forge)
        await asyncio.to_thread(self._secrets.set, forge.webhook_secret_name, secret)
        try:
            created = await self._forges.create_forge(forge)
        except BaseException:
            await self._drop_secret(forge.webhook_secret_name)
            raise
        return created, secret

    async def update(
        self,
        name: str,
        settings: domain.ForgeSettings,
        *,
        token: SecretStr | None = None,
        webhook_secret: SecretStr | None = None,
    ) -> domain.Forge:
        """Change a forge in place. A token given is stored (rotated) under ``token_secret``;
        a webhook secret given replaces the forge's."""
        current = await self._forges.get_forge(name)
        settings = await self._check(settings, token)
        new_secret = webhook_secret.get_secret_value() if webhook_secret else None
        if new_secret is not None:
            _check_webhook_secret(new_secret)
        updated = domain.Forge(
            **settings.model_dump(),
            id=current.id,
            name=current.name,
            webhook_secret_name=current.webhook_secret_name,
            created_at=current.created_at,
        )
        await self._store_token(settings.token_secret, token)
        await self._ensure_config(updated)
        if new_secret is not None:
            await asyncio.to_thread(self._secrets.set, current.webhook_secret_name, new_secret)
        return await self._forges.update_forge(updated)

    async def rotate_webhook_secret(self, name: str) -> str:
        """A new, generated webhook secret for the forge: returned this once."""
        forge = await self._forges.get_forge(name)
        secret = new_webhook_secret()
        await asyncio.to_thread(self._secrets.set, forge.webhook_secret_name, secret)
        return secret

    async def active_attempts(self, name: str) -> builtins.list[domain.Attempt]:
        forge = await self._forges.get_forge(name)
        return await self._forges.list_attempts(forge_id=forge.id, active=True)

    async def remove(self, name: str, *, force: bool = False) -> None:
        """Delete a forge and its webhook secret (not its token: other forges or runs may
        use it). Refused while it has active attempts, unless ``force``."""
        forge = await self._forges.get_forge(name)
        active = await self._forges.list_attempts(forge_id=forge.id, active=True)
        if active and not force:
            raise errors.ConflictError(
                f"the forge {forge.name!r} has {len(active)} active attempt(s): stop them on "
                "the pipeline page (or `agentfarm pipeline stop`) first, or remove it with "
                "force (`agentfarm forge rm --force`), which stops their runs"
            )
        await self._forges.delete_forge(forge.id)
        await self._drop_secret(forge.webhook_secret_name)

    async def test(self, name: str) -> str:
        """Call the forge with the stored token and say, in words, whether it works."""
        forge = await self._forges.get_forge(name)
        value = await self._token(forge.token_secret)
        if not value:
            return (
                f"no token stored under {forge.token_secret}: store it with "
                f"`agentfarm secret set {forge.token_secret}`"
            )
        repo = forge.repos[0]
        try:
            client = forges.make_client(
                forge.kind, forge.base_url, forges.Token(value), retry=TEST_RETRY
            )
        except errors.InvalidInputError as exc:
            return f"token test failed: {exc}"
        try:
            issues = await client.list_labeled_issues(repo, forge.label)
        except forge_errors.ForgeError as exc:
            return f"token test failed: {exc}"
        finally:
            await client.aclose()
        return (
            f"{TOKEN_WORKS}: can read {repo} ({len(issues)} open issue(s) labeled {forge.label!r})"
        )

    # --- helpers -----------------------------------------------------------------------------
    async def _check(
        self, settings: domain.ForgeSettings, token: SecretStr | None
    ) -> domain.ForgeSettings:
        """Refuse what would not work (an unknown config, no token); name the default config."""
        if settings.token_secret.startswith(WEBHOOK_SECRET_PREFIX):
            raise errors.InvalidInputError(
                f"{settings.token_secret} is where a forge's webhook secret is kept: store the "
                "token under another name, e.g. GITHUB_TOKEN or FORGEJO_TOKEN"
            )
        if token is not None:
            forges.Token(token.get_secret_value())  # refuses an empty or whitespace-laden one
        elif await self._token(settings.token_secret) is None:
            raise errors.InvalidInputError(
                f"no secret named {settings.token_secret}: give the token (`token`, or "
                f"`--token-stdin`), or store it first with "
                f"`agentfarm secret set {settings.token_secret}`"
            )
        if settings.config is None:
            return settings.model_copy(update={"config": DEFAULT_CONFIG})
        if settings.config != DEFAULT_CONFIG:
            try:
                await self._store.get_config(settings.config)
            except errors.NotFoundError as exc:
                raise errors.InvalidInputError(
                    f"no config named {settings.config!r}: create it first (`agentfarm config "
                    f"add`), or leave `config` empty to use {DEFAULT_CONFIG!r}"
                ) from exc
        return settings

    async def _store_token(self, name: str, token: SecretStr | None) -> None:
        if token is not None:
            await asyncio.to_thread(self._secrets.set, name, token.get_secret_value())

    async def _ensure_config(self, forge: domain.Forge) -> None:
        """Make the default config when the forge uses it and it does not exist yet."""
        if forge.config != DEFAULT_CONFIG:
            return
        try:
            await self._store.get_config(DEFAULT_CONFIG)
            return
        except errors.NotFoundError:
            pass
        config = models.AgentConfig(
            name=DEFAULT_CONFIG,
            repo=f"{web_root(forge)}/{forge.repos[0]}.git",
            prompt=default_instructions(),
            permission_mode="bypassPermissions",
        )
        with contextlib.suppress(errors.ConflictError):  # made meanwhile: the same default
            await self._store.create_config(config)

    async def _drop_secret(self, name: str) -> None:
        with contextlib.suppress(errors.NotFoundError):
            await asyncio.to_thread(self._secrets.delete, name)


def _check_webhook_secret(value: str) -> None:
    if len(value) < 16 or len(value) > 256 or not value.isprintable() or value != value.strip():
        raise errors.InvalidInputError(
            "the webhook secret must be 16 to 256 printable characters without surrounding "
            "spaces; leave it empty to have one generated"
        )
