from __future__ import annotations

import json

from agentfarm.backends.local import git, monitor


def test_line_type_cheap_and_full() -> None:
    assert monitor.line_type(b'{"type":"result","x":1}') == "result"
    assert monitor.line_type(b'{"subtype":"x", "type": "result"}') == "result"
    assert monitor.line_type(b"not json") is None
    assert monitor.line_type(b"{broken") is None
    assert monitor.line_type(b"[1]") is None


def test_splitter_lines_and_overlong_pieces() -> None:
    splitter = monitor.LineSplitter(limit=4)
    assert splitter.feed(b"ab\ncd") == [b"ab"]
    # A line that arrives whole is one line; the spool splits frames over 64 MiB itself.
    assert splitter.feed(b"efgh\n") == [b"cdefgh"]
    splitter = monitor.LineSplitter(limit=4)
    assert splitter.feed(b"abcdefghij") == [b"abcd", b"efgh"]
    assert splitter.feed(b"\n") == [b"ij"]
    assert splitter.feed(b"tail") == [b"tail"]
    splitter = monitor.LineSplitter(limit=100)
    splitter.feed(b"partial")
    assert splitter.flush() == [b"partial"]


def spec(**overrides: object) -> monitor.Spec:
    raw: dict[str, object] = {
        "run_dir": "/d/runs/r", "mode": "bwrap", "argv": ["/opt/a/agent"], "env": {"K": "v"},
        "stdin": "", "workspace": "/d/runs/r/workspace", "home": "/d/runs/r/home",
        "passwd": "/d/runs/r/etc/passwd", "group": "/d/runs/r/etc/group", "network": False,
        "limits": {}, "cgroup_name": "r", "binds": [["/opt/a", "/opt/a", False]],
    }  # fmt: skip
    raw.update(overrides)
    return monitor.Spec.from_json(json.loads(json.dumps(raw)))


def test_root_launch_binds_staged_paths() -> None:
    argv, cwd, sources, env = monitor.build_launch(spec(uid=61000, gid=61000), 9)
    assert sources == ["/d/runs/r/workspace", "/d/runs/r/home", "/d/runs/r/etc/passwd",
                       "/d/runs/r/etc/group", "/opt/a"]  # fmt: skip
    assert argv[0] == "setpriv"
    assert cwd is None
    assert env == {"K": "v"}
    i = argv.index("/workspace")
    assert argv[i - 2 : i] == ["--bind", "/tmp/af-0"]
    assert argv[argv.index("/tmp/af-4") - 1 :][:3] == ["--ro-bind", "/tmp/af-4", "/opt/a"]


def test_unprivileged_launch_binds_host_paths() -> None:
    argv, _, sources, _ = monitor.build_launch(spec(), 9)
    assert sources == []
    assert argv[0] == "bwrap"
    assert "/d/runs/r/workspace" in argv


def test_unsandboxed_launch_runs_in_the_workspace() -> None:
    argv, cwd, _sources, env = monitor.build_launch(spec(mode="none", uid=5, gid=5), 9)
    assert "bwrap" not in argv
    assert argv[-1] == "/opt/a/agent"
    assert cwd == "/d/runs/r/workspace"
    assert env["HOME"] == "/d/runs/r/home"


def test_git_url_helpers() -> None:
    assert git.is_local("/srv/repo")
    assert git.is_local("file:///srv/repo")
    assert not git.is_local("https://github.com/a/b.git")
    assert not git.is_local("git@github.com:a/b.git")
    assert git.strip_credentials("https://u:tok@host/a.git") == "https://host/a.git"
    assert git.strip_credentials("https://host/a.git") == "https://host/a.git"
