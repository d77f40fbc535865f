"""A launch's credentials: resolved once, off the event loop, from the server's environment
and the secrets file (read once), and handed down in the launch spec.

What a run needs depends on its backend's settings, never on its backend's name: whether the
agent must bring model credentials (a ``shared-home`` pod logs in with the shared ~/.claude),
and whether it clones and pushes away from this host (then it needs git tokens).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import AliasChoices, SecretStr

from agentfarm.domain import backend_config, errors, gittokens, launch, models
from agentfarm.domain.redact import Redactor
from agentfarm.settings import Settings
from agentfarm.store.secrets import SecretStore

#: Each agent's model credentials: (the variable the agent gets, where it may come from, in
#: order: the setting's environment name or a stored secret of that name). An agent not listed
#: (the generic command agent) gets none: an arbitrary program does not get the server's keys.
AGENT_CREDENTIALS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "claude": (
        ("ANTHROPIC_API_KEY", ("ANTHROPIC_API_KEY",)),
        ("CLAUDE_CODE_OAUTH_TOKEN", ("CLAUDE_CODE_OAUTH_TOKEN",)),
    ),
    # Codex's `exec` reads CODEX_API_KEY; an OPENAI_API_KEY is handed on under that name.
    "codex": (("CODEX_API_KEY", ("CODEX_API_KEY", "OPENAI_API_KEY")),),
}
#: Each agent's model endpoint setting (not a secret: handed on, never masked).
AGENT_BASE_URLS = {"claude": "ANTHROPIC_BASE_URL", "codex": "OPENAI_BASE_URL"}
#: Every model credential and endpoint of every agent: what an agent of another kind never gets.
MODEL_CREDENTIALS = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "CODEX_API_KEY")

MISSING = {
    "claude": "no Claude credentials are configured: set CLAUDE_CODE_OAUTH_TOKEN (from "
    "`claude setup-token`) or ANTHROPIC_API_KEY in the server's environment, or "
    "store one with `agentfarm secret set CLAUDE_CODE_OAUTH_TOKEN`",
    "codex": "no OpenAI credentials are configured for the Codex agent: set CODEX_API_KEY (or "
    "OPENAI_API_KEY) in the server's environment, or store one with `agentfarm secret set "
    "CODEX_API_KEY`",
}


@dataclass(frozen=True)
class Credentials:
    #: What the agent gets (the launch spec's ``credentials``).
    env: dict[str, str] = field(repr=False)
    #: Masks every stored secret and every credential value in what the run shows.
    redactor: Redactor = field(repr=False)
    #: The backend needs model credentials and none is configured.
    missing: bool = False
    #: The agent whose credentials these are (names what to set when they are missing).
    agent: str = "claude"
    #: The token of the spec's ``git_token_secret`` for its repository (git's, never the
    #: agent's: it is not in ``env``).
    git_auth: launch.GitAuth | None = field(default=None, repr=False)

    def require(self) -> Credentials:
        if self.missing:
            raise errors.ConfigurationError(MISSING.get(self.agent, MISSING["claude"]))
        return self

    @property
    def model_key(self) -> str | None:
        """A short digest of the model credentials and endpoint (never the secret itself):
        runs with the same one share the model's usage limit."""
        names = [n for n, _ in AGENT_CREDENTIALS.get(self.agent, ())]
        names.append(AGENT_BASE_URLS.get(self.agent, ""))
        used = sorted((n, self.env[n]) for n in names if self.env.get(n))
        if not used:
            return None
        return hashlib.sha256(repr((self.agent, used)).encode()).hexdigest()[:16]

    @property
    def base_url(self) -> str | None:
        """The agent's configured model endpoint, if any."""
        name = AGENT_BASE_URLS.get(self.agent)
        return self.env.get(name) if name else None


def _from_settings(settings: Settings) -> dict[str, str]:
    """The model credentials and endpoints in the server's environment, by their names."""
    values = {
        "ANTHROPIC_API_KEY": settings.anthropic_api_key,
        "CLAUDE_CODE_OAUTH_TOKEN": settings.claude_code_oauth_token,
        "CODEX_API_KEY": settings.codex_api_key,
        "OPENAI_API_KEY": settings.openai_api_key,
    }
    found = {k: v.get_secret_value() for k, v in values.items() if v and v.get_secret_value()}
    for name, url in (
        ("ANTHROPIC_BASE_URL", settings.anthropic_base_url),
        ("OPENAI_BASE_URL", settings.openai_base_url),
    ):
        if url:
            found[name] = url
    return found


def resolve(
    settings: Settings,
    secrets: SecretStore,
    backend: backend_config.BackendSpec,
    agent: str = "claude",
    *,
    repo: str = "",
    git_token_secret: str | None = None,
) -> Credentials:
    """The credentials ``agent`` gets on ``backend``: its own model credentials (the server's
    environment first, then the secret store) and endpoint, never another agent's. Blocking
    (it reads the secrets file): call it in a thread. ``git_token_secret`` (a run's spec
    naming the secret that authenticates its repository ``repo``) must be stored: a
    ConfigurationError says so otherwise."""
    stored = secrets.all()
    environment = _from_settings(settings)

    def lookup(name: str) -> str | None:
        return environment.get(name) or stored.get(name) or None

    found: dict[str, str] = {}
    for given, sources in AGENT_CREDENTIALS.get(agent, ()):
        # The first source set anywhere wins: the environment's before the store's.
        value = next((v for v in map(lookup, sources) if v), None)
        if value:
            found[given] = value
    url_name = AGENT_BASE_URLS.get(agent)
    base_url = lookup(url_name) if url_name else None
    if url_name and base_url:
        found[url_name] = base_url
    needs_model = agent in AGENT_CREDENTIALS and backend.model_credentials_required
    missing = needs_model and not any(name in found for name, _ in AGENT_CREDENTIALS[agent])
    auth = explicit_git_auth(stored, repo, git_token_secret) if git_token_secret else None
    if backend.clones_remotely and auth is None:
        # With a token named by the spec, that one alone reaches the pod (as ``git_auth``).
        found |= git_tokens(settings, stored)
    masked = {k: v for k, v in found.items() if "URL" not in k}
    extra = auth.secrets() if auth else {}
    redactor = Redactor.of(server_secrets(settings), stored, masked, extra)
    return Credentials(env=found, redactor=redactor, missing=missing, agent=agent, git_auth=auth)


async def for_spec(settings: Settings, secrets: SecretStore, spec: models.AgentSpec) -> Credentials:
    """Once per launch, off the loop: the secrets file is read here and nowhere else."""
    return await asyncio.to_thread(
        functools.partial(
            resolve,
            settings,
            secrets,
            spec.backend,
            spec.agent,
            repo=spec.repo,
            git_token_secret=spec.git_token_secret,
        )
    )


def explicit_git_auth(stored: Mapping[str, str], repo: str, name: str) -> launch.GitAuth:
    """The git token a run's spec names (``git_token_secret``) for its repository URL."""
    value = stored.get(name)
    if not value:
        raise errors.ConfigurationError(
            f"the run's git_token_secret names {name!r}, which is not stored: store the "
            f"repository's token with `agentfarm secret set {name}`, or name another secret"
        )
    token = gittokens.explicit_token(repo)
    if token is None:
        raise errors.InvalidInputError(
            f"git_token_secret is for a repository reached over https:// or http://, not "
            f"{repo!r}: remove git_token_secret or give the repository's URL"
        )
    return launch.GitAuth(token.prefix, token.user, value, token.name)


def server_secrets(settings: Settings) -> dict[str, str]:
    """Every secret setting of the server (credentials from its environment, the API token),
    by its environment name: masked wherever a run's text could show one, whether or not
    the run was given it."""
    found: dict[str, str] = {}
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, SecretStr) and value.get_secret_value():
            alias = info.validation_alias
            env = alias.choices[0] if isinstance(alias, AliasChoices) else None
            key = env if isinstance(env, str) else f"AGENTFARM_{name.upper()}"
            found[key] = value.get_secret_value()
    return found


def git_tokens(settings: Settings, stored: Mapping[str, str]) -> dict[str, str]:
    """Git tokens, for backends that clone and push away from this host (a pod): the
    backend hands on only the one for the run's repository host (domain.gittokens)."""
    tokens = {k: v for k, v in stored.items() if gittokens.is_git_token(k) and v}
    for name, env_value in (
        ("GITHUB_TOKEN", settings.github_token),
        ("FORGEJO_TOKEN", settings.forgejo_token),
    ):
        if env_value is not None and env_value.get_secret_value():
            tokens[name] = env_value.get_secret_value()
    return tokens
