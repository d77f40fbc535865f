"""A launch's credentials: what the backend's settings need, from one read of the secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    pod = credentials.resolve(settings, secrets, TOKEN_POD)
    assert credentials.for_agent(pod, ("ANTHROPIC_API_KEY",)) is pod
    bare = credentials.for_agent(pod, ())
    assert bare.env == {"GITHUB_TOKEN": "ghp-0123456789"} and not bare.missing
    assert "sk-0123456789" not in bare.redactor.text("key sk-0123456789")
    empty, settings = store_with(tmp_path / "empty")
    missing = credentials.resolve(settings, empty, LOCAL)
    assert missing.missing and not credentials.for_agent(missing, ()).missing
    credentials.for_agent(missing, ()).require()
