"""Setting up forges: the forge, its token and webhook secrets, and the default config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from agentfarm.domain import errors
from agentfarm.domain import pipeline as domain
from agentfarm.pipeline import admin
from agentfarm.settings import Settings
from agentfarm.store import Store
from agentfarm.store.pipeline import PipelineStore
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import credentials
from tests.fakes.forge import FakeForge
from tests.unit.forge_helpers import REPO, forge

__all__ = ["forge"]


@dataclass
class Parts:
    admin: admin.ForgeAdmin
    store: Store
    pipeline: PipelineStore
    secrets: SecretStore


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = await Store.open(tmp_path / "db.sqlite")
    secrets = SecretStore(tmp_path / "secrets.json")
    pipeline = PipelineStore(store.database)
    yield Parts(admin.ForgeAdmin(pipeline, store, secrets), store, pipeline, secrets)
    await store.close()


def forge_in(**extra: object) -> domain.ForgeIn:
    values: dict[str, object] = {
        "name": "gh",
        "kind": "github",
        "base_url": "https://api.github.com",
        "token_secret": "GITHUB_TOKEN",
        "repos": ["alice/proj"],
        "token": "ghp_secret-token-value",
    }
    values.update(extra)
    return domain.ForgeIn.model_validate(values)


async def test_add_stores_both_secrets_and_returns_the_webhook_secret_once(parts: Parts) -> None:
    forge, secret = await parts.admin.add(forge_in())
    assert len(secret) >= 32
    assert parts.secrets.get("GITHUB_TOKEN") == "ghp_secret-token-value"
    assert parts.secrets.get(domain.webhook_secret_name("gh")) == secret
    assert forge.webhook_secret_name == "FORGE_WEBHOOK_GH"
    shown = (await parts.admin.get("gh")).model_dump_json()
    assert secret not in shown and "ghp_secret-token-value" not in shown


async def test_a_given_webhook_secret_is_kept(parts: Parts) -> None:
    _, secret = await parts.admin.add(forge_in(webhook_secret="a-webhook-secret-of-mine"))
    assert secret == "a-webhook-secret-of-mine"
    with pytest.raises(errors.InvalidInputError, match="16 to 256"):
        await parts.admin.add(forge_in(name="other", webhook_secret="short"))


async def test_add_makes_the_default_config_on_first_use(parts: Parts) -> None:
    forge, _ = await parts.admin.add(forge_in())
    assert forge.config == admin.DEFAULT_CONFIG
    config = await parts.store.get_config(admin.DEFAULT_CONFIG)
    assert config.repo == "https://github.com/alice/proj.git"
    assert config.permission_mode == "bypassPermissions"
    assert config.prompt == admin.default_instructions() and config.prompt
    # Edited by a person, it is theirs: a second forge does not touch it.
    await parts.store.update_config(config.model_copy(update={"prompt": "my instructions"}))
    await parts.admin.add(forge_in(name="gh2"))
    assert (await parts.store.get_config(admin.DEFAULT_CONFIG)).prompt == "my instructions"


async def test_a_named_config_must_exist(parts: Parts) -> None:
    with pytest.raises(errors.InvalidInputError, match="no config named 'nope'"):
        await parts.admin.add(forge_in(config="nope"))
    assert await parts.admin.list() == []


async def test_a_token_secret_that_does_not_exist_without_a_token_is_refused(
    parts: Parts,
) -> None:
    with pytest.raises(errors.InvalidInputError, match="agentfarm secret set GITHUB_TOKEN"):
        await parts.admin.add(forge_in(token=None))
    parts.secrets.set("GITHUB_TOKEN", "stored-before")
    await parts.admin.add(forge_in(token=None))
    assert parts.secrets.get("GITHUB_TOKEN") == "stored-before"


async def test_a_token_in_the_servers_environment_is_enough(parts: Parts) -> None:
    """The kit hands GITHUB_TOKEN/FORGEJO_TOKEN to the server as environment variables."""
    env = Settings.model_validate({"github_token": "ghp_from-the-environment"})
    with_env = admin.ForgeAdmin(parts.pipeline, parts.store, parts.secrets, env)
    await with_env.add(forge_in(token=None))
    assert parts.secrets.get("GITHUB_TOKEN") is None  # nothing copied into the store
    assert await with_env._token("GITHUB_TOKEN") == "ghp_from-the-environment"
    assert await with_env._token("GH_TOKEN") == "ghp_from-the-environment"
    parts.secrets.set("GITHUB_TOKEN", "ghp_stored")
    assert await with_env._token("GITHUB_TOKEN") == "ghp_stored"  # the store's wins
    auth = credentials.explicit_git_auth(
        env, {}, "https://github.com/alice/proj.git", "GITHUB_TOKEN"
    )
    assert auth.token == "ghp_from-the-environment"


async def test_a_token_may_not_overwrite_a_webhook_secret(parts: Parts) -> None:
    _, secret = await parts.admin.add(forge_in())
    with pytest.raises(errors.InvalidInputError, match="webhook secret is kept"):
        await parts.admin.add(forge_in(name="other", token_secret="FORGE_WEBHOOK_GH"))
    assert parts.secrets.get("FORGE_WEBHOOK_GH") == secret


async def test_a_token_with_whitespace_is_refused(parts: Parts) -> None:
    with pytest.raises(errors.InvalidInputError, match="without a 'Bearer '"):
        await parts.admin.add(forge_in(token="Bearer abc"))
    assert parts.secrets.names() == []


async def test_a_duplicate_name_is_a_conflict_and_keeps_the_first_secret(parts: Parts) -> None:
    _, secret = await parts.admin.add(forge_in())
    with pytest.raises(errors.ConflictError, match="already exists"):
        await parts.admin.add(forge_in())
    assert parts.secrets.get("FORGE_WEBHOOK_GH") == secret


async def test_update_rotates_secrets_given_and_keeps_identity(parts: Parts) -> None:
    forge, _ = await parts.admin.add(forge_in())
    settings = domain.ForgeSettings.model_validate(
        {**forge.model_dump(include=set(domain.ForgeSettings.model_fields)), "label": "bot"}
    )
    updated = await parts.admin.update(
        "gh",
        settings,
        token=SecretStr("ghp_new-token"),
        webhook_secret=SecretStr("a-brand-new-webhook-secret"),
    )
    assert (updated.id, updated.name, updated.label) == (forge.id, "gh", "bot")
    assert parts.secrets.get("GITHUB_TOKEN") == "ghp_new-token"
    assert parts.secrets.get("FORGE_WEBHOOK_GH") == "a-brand-new-webhook-secret"
    rotated = await parts.admin.rotate_webhook_secret("gh")
    assert parts.secrets.get("FORGE_WEBHOOK_GH") == rotated != "a-brand-new-webhook-secret"


async def test_remove_drops_the_webhook_secret_not_the_token(parts: Parts) -> None:
    await parts.admin.add(forge_in())
    await parts.admin.remove("gh")
    assert parts.secrets.names() == ["GITHUB_TOKEN"]
    with pytest.raises(errors.NotFoundError):
        await parts.admin.get("gh")


async def test_remove_is_refused_while_attempts_are_active_unless_forced(parts: Parts) -> None:
    forge, _ = await parts.admin.add(forge_in())
    await parts.pipeline.create_attempt(
        domain.Attempt(forge_id=forge.id, repo="alice/proj", number=1, state="running")
    )
    with pytest.raises(errors.ConflictError, match="1 active attempt"):
        await parts.admin.remove("gh")
    await parts.admin.remove("gh", force=True)
    assert await parts.admin.list() == []


async def test_token_test_against_the_forge(parts: Parts, forge: FakeForge) -> None:
    forge.open_issue(REPO, "x", labels=["agentfarm"])
    body = forge_in(kind=forge.kind, base_url=forge.api_url, repos=[REPO], token=forge.token)
    await parts.admin.add(body)
    assert await parts.admin.test("gh") == (
        f"token works: can read {REPO} (1 open issue(s) labeled 'agentfarm')"
    )
    parts.secrets.set("GITHUB_TOKEN", "a-wrong-token")
    answer = await parts.admin.test("gh")
    assert answer.startswith("token test failed:") and "401" in answer
    assert "a-wrong-token" not in answer
    parts.secrets.delete("GITHUB_TOKEN")
    assert "agentfarm secret set GITHUB_TOKEN" in await parts.admin.test("gh")


async def test_token_test_names_a_missing_repository(parts: Parts, forge: FakeForge) -> None:
    body = forge_in(kind=forge.kind, base_url=forge.api_url, repos=["alice/gone"], token="t")
    await parts.admin.add(body)
    parts.secrets.set("GITHUB_TOKEN", forge.token)
    answer = await parts.admin.test("gh")
    assert answer.startswith("token test failed:") and "404" in answer
