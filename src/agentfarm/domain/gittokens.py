"""Which secrets are git tokens, and which of them authenticates a given repository URL.

Conventions (docs/deploy.md):
- ``GITHUB_TOKEN`` (or ``GH_TOKEN``) for ``https://github.com/...``;
- ``FORGEJO_TOKEN`` for the Forgejo the server names (``AGENTFARM_K8S_FORGEJO_URL``);
- ``GIT_TOKEN_<HOST>`` for any other host: the URL's host (and ``:port`` when the URL has
  one), upper-cased, every character other than a letter or digit turned into ``_``:
  ``https://code.example.org/o/r`` -> ``GIT_TOKEN_CODE_EXAMPLE_ORG``,
  ``http://git.lan:3000/o/r`` -> ``GIT_TOKEN_GIT_LAN_3000``.
A per-host token wins over the forge-wide ones, and only the one token for the run's own
repository host reaches the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

FORGE_TOKEN_NAMES = ("GITHUB_TOKEN", "GH_TOKEN", "FORGEJO_TOKEN")
HOST_TOKEN_PREFIX = "GIT_TOKEN_"  # noqa: S105 - a name prefix, not a secret

_NOT_ALNUM = re.compile(r"[^A-Z0-9]")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@]*@")
#: ``scheme://user[:password]@host...`` for the schemes where a user part is a credential
#: (``ssh://git@host/...`` names an account, not a secret, unless it has a password).
_URL_CREDENTIALS = re.compile(
    r"^(?:(?:https?|ftps?|git)://[^/?#]*@|[a-z][a-z0-9+.-]*://[^/?#@]*:[^/?#@]*@)", re.IGNORECASE
)


def has_url_credentials(url: str) -> bool:
    return bool(_URL_CREDENTIALS.match(url))


def strip_url_credentials(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x`` (for runs and configs stored
    before such URLs were refused: they load, without the secret)."""
    return _USERINFO.sub(r"\1", url)


def is_git_token(name: str) -> bool:
    return name in FORGE_TOKEN_NAMES or (
        name.startswith(HOST_TOKEN_PREFIX) and len(name) > len(HOST_TOKEN_PREFIX)
    )


def host_token_name(host: str, port: int | None = None) -> str:
    """``GIT_TOKEN_<HOST>`` (with ``_<PORT>`` when given) for a host name."""
    key = host.upper() if port is None else f"{host.upper()}:{port}"
    return HOST_TOKEN_PREFIX + _NOT_ALNUM.sub("_", key)


@dataclass(frozen=True)
class GitToken:
    """A token for the URLs under ``prefix`` (``scheme://host[:port]/``), sent as HTTP basic
    auth with ``user``; ``name`` is the secret that holds it."""

    prefix: str
    user: str
    name: str


def token_for(repo: str, names: set[str], forgejo_url: str | None = None) -> GitToken | None:
    """The token (among the secrets ``names``) that authenticates ``repo``, if any.

    The forge-wide tokens only go over https; a per-host token is the operator's explicit
    choice for that exact host, so it also goes over plain http (a trusted network only)."""
    parts = urlsplit(repo)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return None
    host, port = parts.hostname, parts.port
    prefix = f"{parts.scheme}://{host}{f':{port}' if port else ''}/"
    candidates = [host_token_name(host, port)] if port else []
    candidates.append(host_token_name(host))
    for name in candidates:
        if name in names:
            return GitToken(prefix, "oauth2", name)
    if parts.scheme != "https":
        return None
    if host == "github.com":
        for name in ("GITHUB_TOKEN", "GH_TOKEN"):
            if name in names:
                return GitToken(prefix, "x-access-token", name)
    forgejo = urlsplit(forgejo_url or "")
    if (
        "FORGEJO_TOKEN" in names
        and forgejo.scheme == "https"
        and (forgejo.hostname, forgejo.port) == (host, port)
    ):
        return GitToken(prefix, "oauth2", "FORGEJO_TOKEN")
    return None


def basic_user(host: str) -> str:
    """The user name sent with a token: ``x-access-token`` for GitHub (github.com, and
    Enterprise servers named ``github.*``), ``oauth2`` for Forgejo, Gitea, GitLab and others
    (they take any user with a token as the password)."""
    host = host.lower()
    return "x-access-token" if host == "github.com" or host.startswith("github.") else "oauth2"


def explicit_token(repo: str) -> GitToken | None:
    """The prefix and user for a token the run's spec names itself (``git_token_secret``):
    the operator's choice for this repository, so plain http is allowed too (a trusted
    network only). ``name`` is the variable the agent image's entrypoint expects for that
    host (``GITHUB_TOKEN`` for https://github.com, else ``GIT_TOKEN_<HOST>[_<PORT>]``).
    None for a URL that is not http(s)."""
    parts = urlsplit(repo)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return None
    host, port = parts.hostname, parts.port
    prefix = f"{parts.scheme}://{host}{f':{port}' if port else ''}/"
    github = parts.scheme == "https" and host == "github.com" and port is None
    name = "GITHUB_TOKEN" if github else host_token_name(host, port)
    return GitToken(prefix, basic_user(host), name)
