"""A launch's credentials: what the backend's settings need, from one read of the secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from agentfarm.domain import backend_config, errors, gittokens
from agentfarm.settings import Settings
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import credentials
from tests.unit.conftest import make_settings

LOCAL = backend_config.LocalSpec()
TOKEN_POD = backend_config.KubernetesSpec()
SHARED_HOME_POD = backend_config.KubernetesSpec(credentials="shared-home")


def store_with(tmp_path: Path, **values: str) -> tuple[SecretStore, Settings]:
    settings = make_settings(tmp_path / "data", anthropic_api_key=None)
    secrets = SecretStore(settings.secrets_path)
    for name, value in values.items():
        secrets.set(name, value)
    return secrets, settings


def test_model_credentials_and_git_tokens_follow_the_backend_settings(tmp_path: Path) -> None:
    secrets, settings = store_with(
        tmp_path,
        CLAUDE_CODE_OAUTH_TOKEN="oauth-0123456789",
        GITHUB_TOKEN="ghp-0123456789",
        OTHER="other-0123456789",
    )
    local = credentials.resolve(settings, secrets, LOCAL)
    assert local.env == {"CLAUDE_CODE_OAUTH_TOKEN": "oauth-0123456789"}
    pod = credentials.resolve(settings, secrets, TOKEN_POD)
    assert pod.env == {
        "CLAUDE_CODE_OAUTH_TOKEN": "oauth-0123456789",
        "GITHUB_TOKEN": "ghp-0123456789",
    }
    # Every stored secret is masked, used or not.
    assert local.redactor.text("oauth-0123456789 ghp-0123456789 other-0123456789") == (
        "[redacted:CLAUDE_CODE_OAUTH_TOKEN] [redacted:GITHUB_TOKEN] [redacted:OTHER]"
    )
    assert "oauth-0123456789" not in repr(local)


def test_missing_model_credentials_only_matter_where_the_backend_needs_them(
    tmp_path: Path,
) -> None:
    secrets, settings = store_with(tmp_path)
    for backend in (LOCAL, TOKEN_POD):
        found = credentials.resolve(settings, secrets, backend)
        with pytest.raises(errors.ConfigurationError, match="no Claude credentials"):
            found.require()
    shared = credentials.resolve(settings, secrets, SHARED_HOME_POD)
    assert shared.require().env == {}


def test_an_agent_naming_no_credentials_needs_none_and_gets_no_model_key(tmp_path: Path) -> None:
    secrets, settings = store_with(
        tmp_path, ANTHROPIC_API_KEY="sk-0123456789", GITHUB_TOKEN="ghp-0123456789"
    )
    bare = credentials.resolve(settings, secrets, TOKEN_POD, "command")
    assert bare.env == {"GITHUB_TOKEN": "ghp-0123456789"} and not bare.missing
    assert "sk-0123456789" not in bare.redactor.text("key sk-0123456789")
    empty, settings = store_with(tmp_path / "empty")
    assert credentials.resolve(settings, empty, LOCAL, "claude").missing
    credentials.resolve(settings, empty, LOCAL, "command").require()


def test_codex_gets_the_openai_credentials_and_claude_the_anthropic_ones(tmp_path: Path) -> None:
    secrets, settings = store_with(
        tmp_path,
        ANTHROPIC_API_KEY="sk-ant-0123456789",
        OPENAI_API_KEY="sk-openai-0123456789",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
    )
    settings = settings.model_copy(update={"anthropic_base_url": "http://127.0.0.1:8"})
    codex = credentials.resolve(settings, secrets, LOCAL, "codex")
    # An OPENAI_API_KEY is handed on as CODEX_API_KEY (what `codex exec` reads).
    assert codex.env == {
        "CODEX_API_KEY": "sk-openai-0123456789",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    assert codex.base_url == "http://127.0.0.1:9/v1"
    claude = credentials.resolve(settings, secrets, LOCAL, "claude")
    assert claude.env == {
        "ANTHROPIC_API_KEY": "sk-ant-0123456789",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8",
    }
    # Whatever the agent, every key is masked in what a run shows.
    for creds in (codex, claude):
        text = creds.redactor.text("sk-ant-0123456789 sk-openai-0123456789")
        assert text == "[redacted:ANTHROPIC_API_KEY] [redacted:OPENAI_API_KEY]"


def test_codex_key_order_and_the_missing_key_sentence(tmp_path: Path) -> None:
    secrets, settings = store_with(
        tmp_path, CODEX_API_KEY="stored-codex-0123", OPENAI_API_KEY="stored-openai-0123"
    )
    assert credentials.resolve(settings, secrets, LOCAL, "codex").env == {
        "CODEX_API_KEY": "stored-codex-0123"
    }
    from_env = settings.model_copy(
        update={
            "codex_api_key": SecretStr("env-codex-0123456"),
            "openai_base_url": "https://gw.example/v1",
        }
    )
    found = credentials.resolve(from_env, secrets, LOCAL, "codex")
    assert found.env == {
        "CODEX_API_KEY": "env-codex-0123456",
        "OPENAI_BASE_URL": ("https://gw.example/v1"),
    }
    assert found.redactor.text("env-codex-0123456") == "[redacted:CODEX_API_KEY]"
    empty, settings = store_with(tmp_path / "empty", ANTHROPIC_API_KEY="sk-ant-0123456789")
    missing = credentials.resolve(settings, empty, LOCAL, "codex")
    assert missing.env == {}
    with pytest.raises(errors.ConfigurationError, match=r"CODEX_API_KEY.*OPENAI_API_KEY"):
        missing.require()


def test_git_token_secret_resolves_to_a_token_for_the_repositorys_prefix(tmp_path: Path) -> None:
    secrets, settings = store_with(
        tmp_path,
        ANTHROPIC_API_KEY="sk-0123456789",
        FORGE_BOT="forge-token-0123456789",
        GITHUB_TOKEN="ghp-0123456789",
    )
    repo = "https://code.example.org:8443/alice/proj.git"
    found = credentials.resolve(settings, secrets, LOCAL, repo=repo, git_token_secret="FORGE_BOT")
    auth = found.git_auth
    assert auth is not None
    assert (auth.prefix, auth.user, auth.token) == (
        "https://code.example.org:8443/",
        "oauth2",
        "forge-token-0123456789",
    )
    assert auth.env_name == "GIT_TOKEN_CODE_EXAMPLE_ORG_8443"
    # Git's, never the agent's; masked, in both its forms, wherever a run's text shows it.
    assert "forge-token-0123456789" not in found.env.values()
    assert "forge-token-0123456789" not in repr(found) + repr(auth)
    shown = found.redactor.text(f"token forge-token-0123456789 header {auth.basic}")
    assert "forge-token-0123456789" not in shown and auth.basic not in shown
    # A pod gets that one token (as git_auth), not every stored git token.
    pod = credentials.resolve(settings, secrets, TOKEN_POD, repo=repo, git_token_secret="FORGE_BOT")
    assert pod.git_auth == auth and "GITHUB_TOKEN" not in pod.env
    github = credentials.resolve(
        settings, secrets, LOCAL, repo="https://github.com/o/r.git", git_token_secret="FORGE_BOT"
    )
    assert github.git_auth is not None
    assert (github.git_auth.user, github.git_auth.env_name) == ("x-access-token", "GITHUB_TOKEN")


def test_a_missing_git_token_secret_is_a_clear_configuration_error(tmp_path: Path) -> None:
    secrets, settings = store_with(tmp_path, ANTHROPIC_API_KEY="sk-0123456789")
    with pytest.raises(errors.ConfigurationError) as raised:
        credentials.resolve(
            settings, secrets, LOCAL, repo="https://git.lan/o/r.git", git_token_secret="NOPE"
        )
    assert "'NOPE', which is not stored" in str(raised.value)
    assert "agentfarm secret set NOPE" in str(raised.value)


def test_plain_http_gets_a_token_only_when_the_spec_names_it(tmp_path: Path) -> None:
    secrets, settings = store_with(
        tmp_path, FORGE_BOT="forge-token-0123456789", GITHUB_TOKEN="ghp-0123456789"
    )
    repo = "http://127.0.0.1:3000/alice/proj.git"
    # Without git_token_secret a forge-wide token never goes over http (nor anywhere local).
    assert gittokens.token_for(repo, {"GITHUB_TOKEN", "FORGEJO_TOKEN"}) is None
    plain = credentials.resolve(settings, secrets, LOCAL, repo=repo)
    assert plain.git_auth is None
    named = credentials.resolve(settings, secrets, LOCAL, repo=repo, git_token_secret="FORGE_BOT")
    assert named.git_auth is not None
    assert (named.git_auth.prefix, named.git_auth.env_name) == (
        "http://127.0.0.1:3000/",
        "GIT_TOKEN_127_0_0_1_3000",
    )
