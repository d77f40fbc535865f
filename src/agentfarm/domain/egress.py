"""Who a sandboxed agent may connect to: the egress allow-list and its checks (pure: no I/O).

A run's policy allows the model endpoint, the run's git remote and the entries its config
lists (``host`` means ports 80 and 443, ``host:port`` one port, ``*.domain`` its subdomains,
``@group`` a named set of package-registry hosts). The egress proxy asks two questions:

- :func:`check_target`, before any DNS look-up: is this host and port on the list at all?
- :func:`check_address`, for every address the name resolved to: whatever the list says, the
  control plane's port, the host's own addresses (loopback included: only the model endpoint,
  the operator's own setting, may live there) and link-local addresses are refused; private
  and other non-public ranges are refused unless the config names that literal address, and
  then only on the ports it names.

Both answer ``None`` (allowed) or a sentence saying why not. Only the standard library is
imported: the per-run monitor and its proxy use this module and must start fast.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Named groups of hosts (ports 80 and 443) for common package registries.
GROUPS: dict[str, tuple[str, ...]] = {
    "@pypi": ("pypi.org", "files.pythonhosted.org"),
    "@npm": ("registry.npmjs.org", "registry.yarnpkg.com"),
    "@github": ("github.com", "api.github.com", "codeload.github.com", "*.githubusercontent.com"),
    "@debian": ("deb.debian.org", "security.debian.org"),
    "@crates": ("crates.io", "index.crates.io", "static.crates.io"),
    "@go": ("proxy.golang.org", "sum.golang.org"),
}
DEFAULT_PORTS = (80, 443)
#: Where the Claude CLI goes when ANTHROPIC_BASE_URL is not set.
DEFAULT_MODEL = ("api.anthropic.com", 443)
#: Each agent's model endpoint: the setting that moves it, and where it is by default. An
#: agent not listed (the generic command agent) is given Anthropic's, as before.
MODEL_ENDPOINTS: dict[str, tuple[str, tuple[str, int]]] = {
    "claude": ("ANTHROPIC_BASE_URL", DEFAULT_MODEL),
    "codex": ("OPENAI_BASE_URL", ("api.openai.com", 443)),
}


def model_endpoint(agent: str) -> tuple[str, tuple[str, int]]:
    """(the base URL setting's name, the default endpoint) for ``agent``."""
    return MODEL_ENDPOINTS.get(agent, MODEL_ENDPOINTS["claude"])


SCHEME_PORTS = {"http": 80, "https": 443, "ssh": 22, "git": 9418}

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
HOST_RE = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
#: scp-like git remotes: ``user@host:path``.
SCP_RE = re.compile(r"^(?:[^@/:]+@)?([^@/:\[\]]+|\[[0-9a-fA-F:.]+\]):(?!//)")

LOCAL_NETS = tuple(
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "0.0.0.0/8", "::1/128", "::/128")
)
LINK_LOCAL_NETS = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10"))
PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    # 64:ff9b:1::/48 is for local NAT64 prefixes of any length: the IPv4 address inside
    # cannot be told, so the whole range counts as private (Python 3.11 calls it global).
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
        "64:ff9b:1::/48",
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: IPv4-translated addresses (SIIT, ``::ffff:0:a.b.c.d``): not IPv4-mapped, and Python calls
#: them global, but a translator on the path delivers them to the IPv4 address inside.
TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


def _nocase(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


_PORT = (
    r"0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
_LABEL_PATTERN = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = rf"(?:\*\.)?{_LABEL_PATTERN}(?:\.{_LABEL_PATTERN})*\.?"
_HEX = r"[0-9A-Fa-f]{1,4}"
_V6 = rf"(?:(?:{_HEX}:){{7}}{_HEX}|(?:{_HEX}:){{1,7}}:|::(?:{_HEX}:){{0,6}}{_HEX})"
#: What :func:`parse_entry` takes, as the API's schema states it (host names up to 253
#: characters are the one rule it leaves to the server).
ENTRY_PATTERN = (
    rf"^\s*(?:{'|'.join(_nocase(g) for g in GROUPS)}|{_NAME}(?::{_PORT})?"
    rf"|\[{_V6}\](?::{_PORT})?|{_V6})\s*$"
)


@dataclass(frozen=True)
class Rule:
    """One allowed host (a name, ``*.suffix`` or an IP literal) on some ports."""

    host: str
    ports: tuple[int, ...]

    def matches(self, host: str, port: int) -> bool:
        if port not in self.ports:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def normalize_host(raw: str) -> str | None:
    """A lowercase host name or a canonical IP literal (brackets removed); None if invalid."""
    host = raw.strip().lower().removesuffix(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not HOST_RE.match(host):
        return None
    return host


def _port(text: str, entry: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError(f"egress entry {entry!r}: the port must be a number from 1 to 65535")
    return int(text)


def parse_entry(entry: str) -> list[Rule]:
    """The rules of one config entry; ValueError with a sentence for the user if invalid."""
    text = entry.strip()
    if text.startswith("@"):
        hosts = GROUPS.get(text.lower())
        if hosts is None:
            known = ", ".join(sorted(GROUPS))
            raise ValueError(f"egress entry {entry!r}: unknown group (known groups: {known})")
        return [Rule(h, DEFAULT_PORTS) for h in hosts]
    if "/" in text:
        raise ValueError(
            f"egress entry {entry!r}: write a host name or host:port, not a URL or a range"
        )
    ports: tuple[int, ...] = DEFAULT_PORTS
    host_text = text
    if text.startswith("["):  # [v6] or [v6]:port
        close = text.find("]")
        rest = text[close + 1 :] if close > 0 else ""
        if close < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"egress entry {entry!r}: write an IPv6 address as [addr]:port")
        host_text = text[: close + 1]
        if rest:
            ports = (_port(rest[1:], entry),)
    elif text.count(":") == 1:
        host_text, port_text = text.split(":")
        ports = (_port(port_text, entry),)
    host = normalize_host(host_text)
    if host is None:
        raise ValueError(
            f"egress entry {entry!r}: write a host name, host:port, *.domain, an IP address "
            f"or a group such as @pypi"
        )
    return [Rule(host, ports)]


def endpoint_of_url(url: str) -> tuple[str, int] | None:
    """The host and port an http(s), ssh, git or scp-like URL connects to."""
    text = url.strip()
    if "://" not in text:
        match = SCP_RE.match(text)
        host = normalize_host(match.group(1)) if match else None
        return (host, 22) if host else None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    default = SCHEME_PORTS.get(parts.scheme.lower())
    host = normalize_host(parts.hostname or "")
    if host is None or (port is None and default is None):
        return None
    return host, port if port is not None else default  # type: ignore[return-value]


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    #: The model endpoint (host, port): the one target that may be on the host's loopback.
    model: tuple[str, int] | None = DEFAULT_MODEL
    #: The control plane's listening (host, port) pairs: never reachable.
    control: tuple[tuple[str, int], ...] = ()
    #: The host's own addresses (filled in by the proxy): treated like loopback.
    local_addresses: frozenset[str] = field(default_factory=frozenset)

    @property
    def literals(self) -> frozenset[tuple[str, int]]:
        """IP addresses a config names explicitly, with their ports (private ones are then
        allowed there: only on those ports, whatever name resolved to them)."""
        return frozenset(
            (r.host, port) for r in self.rules if _ip(r.host) is not None for port in r.ports
        )

    def describe(self) -> list[str]:
        """Readable ``host:port`` entries, the model endpoint first."""
        found = [f"{self.model[0]}:{self.model[1]}"] if self.model else []
        for rule in self.rules:
            ports = ",".join(map(str, rule.ports))
            found.append(f"{_bracket(rule.host)}:{ports}")
        return list(dict.fromkeys(found))

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": [[r.host, list(r.ports)] for r in self.rules],
            "model": list(self.model) if self.model else None,
            "control": [list(c) for c in self.control],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Policy:
        model = raw.get("model")
        return cls(
            rules=tuple(Rule(str(h), tuple(int(p) for p in ps)) for h, ps in raw["rules"]),
            model=(str(model[0]), int(model[1])) if model else None,
            control=tuple((str(h), int(p)) for h, p in raw.get("control", ())),
        )


def build_policy(
    entries: list[str],
    *,
    model_url: str | None,
    remote: str | None,
    control: list[tuple[str, int]],
    agent: str = "claude",
) -> Policy:
    """The policy of one run: its config's entries, the model endpoint and its git remote
    (``remote``: the repository URL, None for a repository on this machine). ``model_url``
    is the agent's configured base URL; None: the agent's default endpoint."""
    rules: list[Rule] = []
    for entry in entries:
        rules += parse_entry(entry)
    setting, default = model_endpoint(agent)
    model = endpoint_of_url(model_url) if model_url else default
    if model is None:
        raise ValueError(
            f"{setting} {model_url!r} is not a URL with a host: fix it, or a sandbox "
            "with network allowlist cannot reach its model"
        )
    remote_end = endpoint_of_url(remote) if remote else None
    if remote_end is not None:
        rules.append(Rule(remote_end[0], (remote_end[1],)))
    cp = [(h, p) for h, p in ((normalize_host(h) or h, p) for h, p in control)]
    return Policy(rules=tuple(dict.fromkeys(rules)), model=model, control=tuple(cp))


def check_target(policy: Policy, host: str, port: int) -> str | None:
    """Why ``host:port`` may not be asked for (None: it is on the list); no DNS needed."""
    if not 1 <= port <= 65535:
        return f"port {port} is not a valid port"
    name = normalize_host(host)
    if name is None:
        return "not a valid host name"
    if policy.model is not None and (name, port) == policy.model:
        return None
    if any(rule.matches(name, port) for rule in policy.rules):
        return None
    return "not on the run's egress allow-list (add it to the config's sandbox.egress)"


def check_address(policy: Policy, host: str, port: int, address: str) -> str | None:
    """Why a connection to ``address`` (which ``host`` resolved to) is refused, or None."""
    ip = _ip(address)
    if ip is None:
        return f"{address!r} is not an IP address"
    ip = _unwrap(ip)
    is_model = policy.model is not None and (normalize_host(host), port) == policy.model
    kind = classify(ip, policy.local_addresses)
    if _is_control_plane(policy, ip, port, kind):
        return "the address of agentfarm's control plane is never reachable from a sandbox"
    if kind == "link-local":
        return f"{ip} is link-local (cloud metadata lives there): never reachable"
    if kind == "local":
        if is_model:
            return None
        return f"{ip} is this host's own address: only the model endpoint may be there"
    if kind in ("private", "special"):
        if is_model or (str(ip), port) in policy.literals:
            return None
        return (
            f"{ip} is a private or non-public address: name it literally in the config's "
            "sandbox.egress to allow it"
        )
    return None


def classify(ip: IP, local_addresses: frozenset[str] = frozenset()) -> str:
    """``local``, ``link-local``, ``private``, ``special`` (other non-public) or ``public``."""
    ip = _unwrap(ip)
    if any(ip in net for net in LOCAL_NETS) or str(ip) in local_addresses:
        return "local"
    if any(ip in net for net in LINK_LOCAL_NETS):
        return "link-local"
    if any(ip in net for net in PRIVATE_NETS):
        return "private"
    if not ip.is_global or ip.is_multicast:
        return "special"
    return "public"


def _is_control_plane(policy: Policy, ip: IP, port: int, kind: str) -> bool:
    for host, cp_port in policy.control:
        if port != cp_port:
            continue
        cp_ip = _ip(host)
        # A server on a wildcard address or a loopback name answers on every local address.
        if kind == "local" or cp_ip is None or cp_ip.is_unspecified or cp_ip == ip:
            return True
    return False


def _unwrap(ip: IP) -> IP:
    """The IPv4 address inside an IPv4-mapped, IPv4-compatible, IPv4-translated, 6to4 or
    NAT64 IPv6 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if 1 < int(ip) <= 0xFFFFFFFF:  # ::a.b.c.d, deprecated but still parsed
            return ipaddress.IPv4Address(int(ip))
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in NAT64 or ip in TRANSLATED:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _ip(text: str) -> IP | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
