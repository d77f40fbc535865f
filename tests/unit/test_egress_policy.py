"""The egress policy (pure): entries, groups, and which addresses are never reachable.

Addresses below are data only: nothing here connects anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from agentfarm.backends.local.backend import LocalBackend
from agentfarm.domain import backend_config, egress, errors, models
from agentfarm.settings import Settings

CONTROL = [("127.0.0.1", 8080)]


def policy(*entries: str, model: str | None = None, remote: str | None = None) -> egress.Policy:
    return egress.build_policy(list(entries), model_url=model, remote=remote, control=CONTROL)


# --- entries ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "rules"),
    [
        ("pypi.org", [egress.Rule("pypi.org", (80, 443))]),
        ("PyPI.org.", [egress.Rule("pypi.org", (80, 443))]),
        ("example.com:8443", [egress.Rule("example.com", (8443,))]),
        ("*.example.com", [egress.Rule("*.example.com", (80, 443))]),
        ("10.1.2.3:5000", [egress.Rule("10.1.2.3", (5000,))]),
        ("[fd00::1]:22", [egress.Rule("fd00::1", (22,))]),
        ("[fd00::1]", [egress.Rule("fd00::1", (80, 443))]),
        ("fd00::1", [egress.Rule("fd00::1", (80, 443))]),
    ],
)
def test_entries_parse(entry: str, rules: list[egress.Rule]) -> None:
    assert egress.parse_entry(entry) == rules


def test_groups_expand_to_their_hosts() -> None:
    assert set(egress.GROUPS) >= {"@pypi", "@npm", "@github", "@debian", "@crates", "@go"}
    rules = egress.parse_entry("@pypi")
    assert {r.host for r in rules} == {"pypi.org", "files.pythonhosted.org"}
    assert all(r.ports == (80, 443) for r in rules)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("@nope", "unknown group"),
        ("example.com:0", "port"),
        ("example.com:99999", "port"),
        ("example.com:http", "port"),
        ("example.com:\u00b2", "port"),  # isdigit() says yes, int() says no
        ("http://example.com", "not a URL"),
        ("exa mple.com", "host name"),
        ("-bad.example", "host name"),
        ("10.0.0.0/8", "not a URL or a range"),
        ("foo.*.com", "host name"),
        ("[fd00::1", "IPv6"),
        ("", "host name"),
    ],
)
def test_bad_entries_say_what_to_write(entry: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        egress.parse_entry(entry)
    assert repr(entry) in str(info.value)


def test_config_validates_entries_with_a_clear_message() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        backend_config.SandboxSpec(egress=["pypi.org", "@nope"])
    assert "unknown group" in str(info.value) and "@pypi" in str(info.value)
    assert backend_config.SandboxSpec(egress=[" @npm ", "x.org:81"]).egress == ["@npm", "x.org:81"]


def test_network_defaults_to_allowlist_and_old_booleans_still_parse() -> None:
    assert backend_config.SandboxSpec().network == "allowlist"
    assert backend_config.SandboxSpec.model_validate({"network": False}).network == "none"
    assert backend_config.SandboxSpec.model_validate({"network": True}).network == "allowlist"
    stored = models.AgentSpec.model_validate({"repo": "/r", "sandbox": {"network": False}})
    assert isinstance(stored.backend, backend_config.LocalSpec)
    assert stored.backend.sandbox.network == "none"
    with pytest.raises(pydantic.ValidationError):
        backend_config.SandboxSpec.model_validate({"network": "sometimes"})


def test_urls_give_their_endpoint() -> None:
    assert egress.endpoint_of_url("https://api.anthropic.com") == ("api.anthropic.com", 443)
    assert egress.endpoint_of_url("http://127.0.0.1:8765/x") == ("127.0.0.1", 8765)
    assert egress.endpoint_of_url("http://[::1]:9/") == ("::1", 9)
    assert egress.endpoint_of_url("git@github.com:o/r.git") == ("github.com", 22)
    assert egress.endpoint_of_url("ssh://git@host.example:2222/r") == ("host.example", 2222)
    assert egress.endpoint_of_url("git://host.example/r") == ("host.example", 9418)
    assert egress.endpoint_of_url("ftp://host.example/r") is None
    assert egress.endpoint_of_url("http://[bad/") is None


# --- check_target: before any DNS ------------------------------------------------------------
def test_the_model_endpoint_and_the_remote_are_allowed_and_nothing_else() -> None:
    p = policy(remote="https://git.example.org/o/r.git")
    assert egress.check_target(p, "api.anthropic.com", 443) is None
    assert egress.check_target(p, "API.Anthropic.com.", 443) is None
    assert egress.check_target(p, "api.anthropic.com", 80) is not None
    assert egress.check_target(p, "git.example.org", 443) is None
    assert egress.check_target(p, "git.example.org", 22) is not None
    reason = egress.check_target(p, "pypi.org", 443)
    assert reason is not None and "allow-list" in reason and "sandbox.egress" in reason
    assert egress.check_target(p, "name.invalid", 443) is not None


def test_configured_model_endpoint_replaces_the_default() -> None:
    p = policy(model="http://127.0.0.1:8765")
    assert egress.check_target(p, "127.0.0.1", 8765) is None
    assert egress.check_target(p, "api.anthropic.com", 443) is not None


def test_each_agent_reaches_its_own_model_endpoint() -> None:
    codex = egress.build_policy([], model_url=None, remote=None, control=CONTROL, agent="codex")
    assert egress.check_target(codex, "api.openai.com", 443) is None
    assert egress.check_target(codex, "api.anthropic.com", 443) is not None
    moved = egress.build_policy(
        [], model_url="http://127.0.0.1:9/v1", remote=None, control=CONTROL, agent="codex"
    )
    assert egress.check_target(moved, "127.0.0.1", 9) is None
    assert egress.check_target(moved, "api.openai.com", 443) is not None
    claude = egress.build_policy([], model_url=None, remote=None, control=CONTROL, agent="claude")
    assert egress.check_target(claude, "api.openai.com", 443) is not None
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        egress.build_policy([], model_url="nohost", remote=None, control=CONTROL, agent="codex")


def test_entries_ports_and_wildcards() -> None:
    p = policy("pypi.org", "*.example.com", "db.example.net:5432")
    assert egress.check_target(p, "pypi.org", 80) is None
    assert egress.check_target(p, "pypi.org", 22) is not None
    assert egress.check_target(p, "a.b.example.com", 443) is None
    assert egress.check_target(p, "example.com", 443) is not None
    assert egress.check_target(p, "badexample.com", 443) is not None
    assert egress.check_target(p, "db.example.net", 5432) is None
    assert egress.check_target(p, "db.example.net", 443) is not None


def test_malformed_targets_are_refused() -> None:
    p = policy("pypi.org")
    assert egress.check_target(p, "pypi.org", 0) is not None
    assert egress.check_target(p, "pypi.org", 70000) is not None
    assert egress.check_target(p, "pypi.org/../x", 443) is not None
    assert egress.check_target(p, "", 443) is not None


# --- check_address: after resolution ---------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.5.6.7",
        "::1",
        "0.0.0.0",  # noqa: S104
        "::",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "::ffff:0:7f00:1",  # IPv4-translated (SIIT) 127.0.0.1
        "0.1.2.3",
    ],
)
def test_loopback_is_refused_for_listed_names(address: str) -> None:
    p = policy("pypi.org", "127.0.0.1")
    reason = egress.check_address(p, "pypi.org", 443, address)
    assert reason is not None and "own address" in reason


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fe80::1%eth0",
        "::ffff:169.254.169.254",
        "::169.254.169.254",
        "2002:a9fe:a9fe::1",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_link_local_is_never_reachable_even_when_named(address: str) -> None:
    p = policy(address.removeprefix("::ffff:"), f"[{address}]", "metadata.example")
    for host in ("metadata.example", address):
        reason = egress.check_address(p, host, 80, address)
        assert reason is not None and "link-local" in reason


def test_link_local_is_refused_even_for_the_model_endpoint() -> None:
    p = policy(model="http://169.254.169.254")
    assert egress.check_target(p, "169.254.169.254", 80) is None
    assert egress.check_address(p, "169.254.169.254", 80, "169.254.169.254") is not None


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "100.64.0.1",
        "fc00::1",
        "fd12:3456::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64 (RFC 8215): which IPv4 it maps to is unknown
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "192.0.2.1",  # documentation range: not public either
        "224.0.0.1",
    ],
)
def test_private_and_special_ranges_are_refused_unless_named_literally(address: str) -> None:
    p = policy("internal.example")
    reason = egress.check_address(p, "internal.example", 443, address)
    assert reason is not None and "private" in reason
    assert "sandbox.egress" in reason


def test_a_literal_private_address_in_the_config_is_allowed() -> None:
    p = policy("git.internal", "10.1.2.3")
    assert egress.check_address(p, "git.internal", 443, "10.1.2.3") is None
    assert egress.check_address(p, "10.1.2.3", 443, "10.1.2.3") is None
    assert egress.check_address(p, "git.internal", 443, "10.1.2.4") is not None


def test_a_literal_private_address_is_allowed_only_on_its_ports() -> None:
    # A listed name that resolves to the literal (DNS the agent may control, a wildcard entry)
    # must not open the literal's other ports.
    p = policy("*.tunnel.example", "10.1.2.3:5000")
    assert egress.check_address(p, "10.1.2.3", 5000, "10.1.2.3") is None
    assert egress.check_address(p, "x.tunnel.example", 5000, "10.1.2.3") is None
    reason = egress.check_address(p, "x.tunnel.example", 443, "10.1.2.3")
    assert reason is not None and "private" in reason


def test_public_addresses_pass() -> None:
    p = policy("pypi.org")
    assert egress.check_address(p, "pypi.org", 443, "151.101.0.223") is None
    assert egress.check_address(p, "pypi.org", 443, "2a04:4e42::223") is None
    assert egress.check_address(p, "pypi.org", 443, "not-an-ip") is not None


def test_only_the_model_endpoint_may_be_on_loopback() -> None:
    p = policy(model="http://localhost:8765")
    assert egress.check_address(p, "localhost", 8765, "127.0.0.1") is None
    assert egress.check_address(p, "localhost", 8765, "::1") is None
    assert egress.check_address(p, "localhost", 8766, "127.0.0.1") is not None


def test_the_control_plane_is_never_reachable() -> None:
    # Even as the model endpoint, and on any local address when it listens on a wildcard.
    p = policy(model="http://127.0.0.1:8080")
    reason = egress.check_address(p, "127.0.0.1", 8080, "127.0.0.1")
    assert reason is not None and "control plane" in reason
    wild = egress.build_policy(
        ["10.0.0.5:8080"],
        model_url=None,
        remote=None,
        control=[("0.0.0.0", 8080)],  # noqa: S104
    )
    assert egress.check_address(wild, "10.0.0.5", 8080, "10.0.0.5") is not None
    named = egress.build_policy(
        ["10.0.0.5:8080"], model_url=None, remote=None, control=[("10.0.0.5", 8080)]
    )
    assert egress.check_address(named, "10.0.0.5", 8080, "10.0.0.5") is not None


def test_the_hosts_own_addresses_count_as_loopback() -> None:
    p = egress.Policy(
        rules=(egress.Rule("203.0.113.9", (5432,)),),
        local_addresses=frozenset({"198.51.100.7"}),
    )
    assert egress.classify(egress.ipaddress.ip_address("198.51.100.7"), p.local_addresses) == (
        "local"
    )
    reason = egress.check_address(p, "db.example", 5432, "198.51.100.7")
    assert reason is not None and "own address" in reason


def test_policy_round_trips_through_json_and_describes_itself() -> None:
    p = policy("@pypi", "x.org:81", "[fd00::1]:22", model="http://127.0.0.1:9", remote=None)
    assert egress.Policy.from_json(p.to_json()) == p
    described = p.describe()
    assert described[0] == "127.0.0.1:9"
    assert "pypi.org:80,443" in described and "[fd00::1]:22" in described


def test_an_unusable_model_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="ANTHROPIC_BASE_URL"):
        policy(model="not a url")


def test_the_local_backend_builds_the_runs_policy_and_notices(tmp_path: Path) -> None:
    backend = LocalBackend(Settings(data_dir=tmp_path, port=8123))

    def network(sandbox: dict[str, object], secrets: dict[str, str]) -> tuple[egress.Policy, str]:
        spec = models.AgentSpec(repo="https://git.example.org/o/r.git", sandbox=sandbox)  # type: ignore[arg-type]
        policy, _python, notices = backend._network(models.Run(spec=spec), secrets)
        return policy, " ".join(notices)

    policy, notice = network({"egress": ["@npm"]}, {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"})
    assert policy.model == ("127.0.0.1", 9) and policy.control == (("127.0.0.1", 8123),)
    assert egress.check_target(policy, "git.example.org", 443) is None
    assert egress.check_target(policy, "registry.npmjs.org", 443) is None
    assert notice.startswith("network: allowlist") and "127.0.0.1:9" in notice
    assert "sandbox.network is open" in network({"network": "open"}, {})[1]
    assert "no network" in network({"network": "none"}, {})[1]
    assert network({"mode": "none"}, {})[1] == ""  # the monitor's own notice says it all
    with pytest.raises(errors.ConfigurationError, match="ANTHROPIC_BASE_URL"):
        network({}, {"ANTHROPIC_BASE_URL": "nonsense"})
