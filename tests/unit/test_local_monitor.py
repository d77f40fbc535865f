from __future__ import annotations

import dataclasses
import json

from agentfarm.backends.local import (
    cgroups,
    egress,
    git,
    lines,
    monitor_launch,
    monitor_spec,
    sandbox,
)
from agentfarm.domain import launch


def test_line_type_cheap_and_full() -> None:
    assert lines.line_type(b'{"type":"result","x":1}') == "result"
    assert lines.line_type(b'{"subtype":"x", "type": "result"}') == "result"
    assert lines.line_type(b"not json") is None
    assert lines.line_type(b"{broken") is None
    assert lines.line_type(b"[1]") is None


def test_splitter_lines_and_overlong_pieces() -> None:
    splitter = lines.LineSplitter(limit=4)
    assert splitter.feed(b"ab\ncd") == [b"ab"]
    # A line that arrives whole is one line; the spool splits frames over 64 MiB itself.
    assert splitter.feed(b"efgh\n") == [b"cdefgh"]
    splitter = lines.LineSplitter(limit=4)
    assert splitter.feed(b"abcdefghij") == [b"abcd", b"efgh"]
    assert splitter.feed(b"\n") == [b"ij"]
    assert splitter.feed(b"tail") == [b"tail"]
    splitter = lines.LineSplitter(limit=100)
    splitter.feed(b"partial")
    assert splitter.flush() == [b"partial"]


COMMAND = launch.AgentCommand(argv=["agent", "--flag"], env={"K": "v"})
CREDENTIALS = {"ANTHROPIC_API_KEY": "sk-test"}


def spec(**overrides: object) -> monitor_spec.MonitorSpec:
    raw: dict[str, object] = {
        "run_dir": "/d/runs/r", "mode": "bwrap", "program": "/opt/a/agent",
        "launch": launch.LaunchSpec.of("r", COMMAND, CREDENTIALS).to_json(),
        "workspace": "/d/runs/r/workspace", "home": "/d/runs/r/home",
        "passwd": "/d/runs/r/etc/passwd", "group": "/d/runs/r/etc/group", "network": False,
        "limits": {}, "cgroup_name": "r", "binds": [["/opt/a", "/opt/a", False]],
    }  # fmt: skip
    raw.update(overrides)
    return monitor_spec.MonitorSpec.from_json(json.loads(json.dumps(raw)))


def test_the_spec_carries_the_limits_and_the_cpu_weight_across() -> None:
    limits = cgroups.Limits(memory_mb=64, cpus=0.5, pids=10, cpu_weight=25)
    sent = spec(limits={})
    sent = dataclasses.replace(sent, limits=limits)
    assert spec(limits=sent.to_json()["limits"]).limits == limits
    assert spec().limits.cpu_weight is None  # a spec written before the weight


def test_the_spec_carries_the_launch_spec_across_unchanged() -> None:
    command = launch.AgentCommand(
        argv=["claude", "-p"], env={"A": "b"}, stdin=b"\x00hi\n", close_stdin_after=("result",),
        interrupt=b"stop\n", followup=launch.Followup(b'{"t": ', b"}\n"),
    )  # fmt: skip
    sent = launch.LaunchSpec.of("0123456789ab", command, CREDENTIALS)
    got = spec(launch=sent.to_json()).launch
    assert got == sent
    assert got.branch == "agentfarm/0123456789ab" and got.credentials == CREDENTIALS
    assert got.command.followup is not None
    assert got.command.followup.encode('say "hi"') == b'{"t": "say \\"hi\\""}\n'
    assert "sk-test" not in repr(got)


def test_root_launch_binds_staged_paths() -> None:
    argv, cwd, sources, env = monitor_launch.build_launch(spec(uid=61000, gid=61000), 9)
    assert sources == ["/d/runs/r/workspace", "/d/runs/r/home", "/d/runs/r/etc/passwd",
                       "/d/runs/r/etc/group", "/opt/a"]  # fmt: skip
    assert argv[0] == "bwrap"  # the launcher child drops to the uid itself
    assert cwd is None
    assert env == sandbox.agent_env({"K": "v"}, CREDENTIALS, home=sandbox.HOME)
    i = argv.index("/workspace")
    assert argv[i - 2 : i] == ["--bind", "/tmp/af-0"]
    assert argv[argv.index("/tmp/af-4") - 1 :][:3] == ["--ro-bind", "/tmp/af-4", "/opt/a"]


def test_unprivileged_launch_binds_host_paths() -> None:
    argv, _, sources, _ = monitor_launch.build_launch(spec(), 9)
    assert sources == []
    assert argv[0] == "bwrap"
    assert "/d/runs/r/workspace" in argv


def test_unsandboxed_launch_runs_in_the_workspace() -> None:
    argv, cwd, _sources, env = monitor_launch.build_launch(spec(mode="none", uid=5, gid=5), 9)
    assert "bwrap" not in argv
    assert argv[-2:] == ["/opt/a/agent", "--flag"]
    assert cwd == "/d/runs/r/workspace"
    assert env["HOME"] == "/d/runs/r/home"


def test_git_url_helpers() -> None:
    assert git.is_local("/srv/repo")
    assert git.is_local("file:///srv/repo")
    assert not git.is_local("https://github.com/a/b.git")
    assert not git.is_local("git@github.com:a/b.git")
    assert git.strip_credentials("https://u:tok@host/a.git") == "https://host/a.git"
    assert git.strip_credentials("https://host/a.git") == "https://host/a.git"


def test_allowlist_as_root_runs_bwrap_in_the_launchers_own_namespace() -> None:
    # The launcher child makes the namespace (egress.private_network): no bridge, and bwrap
    # must not make another one.
    s = spec(uid=61000, gid=61000, network="allowlist")
    assert s.via_netns and not s.via_bridge
    argv, _, sources, env = monitor_launch.build_launch(s, 9)
    assert "--unshare-net" not in argv and egress.SANDBOX_SOCKET not in argv
    assert argv[-3:] == ["--", "/opt/a/agent", "--flag"]
    assert egress.BRIDGE not in sources
    # The agent reaches out through the proxy: its variables are in the environment.
    base = sandbox.agent_env({"K": "v"}, CREDENTIALS, home=sandbox.HOME)
    assert env == {**base, **egress.proxy_env()}


def test_allowlist_through_the_bridge_isolates_the_network() -> None:
    s = spec(uid=61000, gid=61000, network="allowlist", egress_via="bridge")
    assert s.via_bridge and spec(network="allowlist").via_bridge  # not root: always the bridge
    argv, _, sources, _ = monitor_launch.build_launch(s, 9)
    assert "--unshare-net" in argv
    assert sources[-2:] == ["/d/runs/r/egress.sock", egress.BRIDGE]
    socket_bind = argv.index(egress.SANDBOX_SOCKET)
    assert argv[socket_bind - 2 : socket_bind] == ["--ro-bind", "/tmp/af-5"]
    command = argv[argv.index("--", argv.index("--json-status-fd")) + 1 :]
    port = str(egress.SANDBOX_PORT)
    assert command == ["/usr/bin/python3", "-S", "-I", egress.SANDBOX_BRIDGE,
                       egress.SANDBOX_SOCKET, port, "--", "/opt/a/agent", "--flag"]  # fmt: skip


def test_network_policies_none_and_open() -> None:
    argv, _, sources, _ = monitor_launch.build_launch(spec(network="none"), 9)
    assert "--unshare-net" in argv and egress.SANDBOX_SOCKET not in argv
    argv, _, _, _ = monitor_launch.build_launch(spec(network="open"), 9)
    assert "--unshare-net" not in argv and egress.SANDBOX_SOCKET not in argv
    assert sources == []
    # A spec with the old boolean still means what it meant.
    assert spec(network=True).network == "open" and spec(network=False).network == "none"
    # Unsandboxed runs cannot be isolated: no proxy is started for them.
    assert not spec(mode="none", network="allowlist").allowlist


def test_etc_links_reach_the_sandbox_as_symlinks() -> None:
    sent = spec(etc=["hosts"], etc_links=[["localtime", "/usr/share/zoneinfo/Etc/UTC"]])
    again = monitor_spec.MonitorSpec.from_json(json.loads(json.dumps(sent.to_json())))
    assert again.etc_links == (("localtime", "/usr/share/zoneinfo/Etc/UTC"),)
    argv = monitor_launch.build_launch(again, status_fd=5)[0]
    at = argv.index("/usr/share/zoneinfo/Etc/UTC")
    assert argv[at - 1 : at + 2] == ["--symlink", "/usr/share/zoneinfo/Etc/UTC", "/etc/localtime"]
    assert spec().etc_links == ()  # a spec from before the field
