"""A launch's credentials: what the backend's settings need, from one read of the secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from agentfarm.domain import backend_config, errors
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
