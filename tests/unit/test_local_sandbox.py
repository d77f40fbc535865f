from __future__ import annotations

from agentfarm.backends.local import sandbox


def config(**overrides: object) -> sandbox.SandboxConfig:
    values: dict[str, object] = {
        "workspace": "/data/runs/r1/workspace",
        "home": "/data/runs/r1/home",
        "passwd": "/data/runs/r1/etc/passwd",
        "group": "/data/runs/r1/etc/group",
        "network": True,
        "etc": ("hosts", "resolv.conf"),
        "status_fd": 7,
    }
    values.update(overrides)
    return sandbox.SandboxConfig(**values)  # type: ignore[arg-type]


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_bwrap_runs_the_agent_after_its_options() -> None:
    argv = sandbox.bwrap_argv(config(), ["agent", "--x"])
    assert argv[0] == "bwrap"
    assert argv[-3:] == ["--", "agent", "--x"]


def test_curated_etc_and_writable_workspace_only() -> None:
    argv = sandbox.bwrap_argv(
        config(extra_binds=(sandbox.Bind("/opt/agent", "/opt/agent"),)), ["a"]
    )
    ro = pairs(argv, "--ro-bind")
    rw = pairs(argv, "--bind")
    assert ("/usr", "/usr") in ro
    assert ("/etc/hosts", "/etc/hosts") in ro
    assert ("/data/runs/r1/etc/passwd", "/etc/passwd") in ro
    assert ("/opt/agent", "/opt/agent") in ro
    assert ("/etc", "/etc") not in ro
    assert rw == [
        ("/data/runs/r1/home", sandbox.HOME),
        ("/data/runs/r1/workspace", sandbox.WORKSPACE),
    ]
    assert argv[argv.index("--chdir") + 1] == sandbox.WORKSPACE


def test_isolation_flags() -> None:
    argv = sandbox.bwrap_argv(config(), ["a"])
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-user",
                 "--disable-userns", "--die-with-parent", "--new-session"):  # fmt: skip
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--json-status-fd") + 1] == "7"
    assert "--unshare-net" not in argv
    assert "--unshare-net" in sandbox.bwrap_argv(config(network=False), ["a"])
    # The environment never travels in argv (it would show in ps).
    assert "--setenv" not in argv


def test_tmpfs_comes_before_binds_below_it() -> None:
    argv = sandbox.bwrap_argv(config(extra_binds=(sandbox.Bind("/tmp/x", "/tmp/x"),)), ["a"])
    assert argv.index("/tmp") < argv.index("/tmp/x")


def test_env_is_explicit_and_secrets_win() -> None:
    env = sandbox.agent_env({"FOO": "1"}, {"ANTHROPIC_API_KEY": "k"}, home="/home/agent")
    assert env["HOME"] == "/home/agent"
    assert env["FOO"] == "1"
    assert env["ANTHROPIC_API_KEY"] == "k"
    assert env["PATH"].startswith("/usr/local/bin")


def test_passwd_names_the_agent_user() -> None:
    assert "agent:x:61000:61000:" in sandbox.passwd_file(61000, 61000)
    assert "agent:x:61000:" in sandbox.group_file(61000)


def test_etc_symlinks_into_usr_stay_symlinks_inside() -> None:
    argv = sandbox.bwrap_argv(
        config(etc_links=(("localtime", "/usr/share/zoneinfo/Etc/UTC"),)), ["a"]
    )
    assert ("/usr/share/zoneinfo/Etc/UTC", "/etc/localtime") in pairs(argv, "--symlink")
    assert ("/etc/localtime", "/etc/localtime") not in pairs(argv, "--ro-bind")


def test_etc_entries_keeps_links_into_usr_and_binds_the_rest() -> None:
    links = {
        "/etc/localtime": "/usr/share/zoneinfo/Europe/Paris",
        "/etc/timezone": "../usr/share/zoneinfo/tz",  # relative: made absolute
        "/etc/resolv.conf": "/run/systemd/resolve/stub-resolv.conf",  # outside /usr: bound
        "/etc/hosts": "/usr/lib/hosts",  # into /usr, but that link leads out of it: bound
    }
    real = {
        "/etc/localtime": "/usr/share/zoneinfo/Europe/Paris",
        "/etc/timezone": "/usr/share/zoneinfo/tz",
        "/etc/resolv.conf": "/run/systemd/resolve/stub-resolv.conf",
        "/etc/hosts": "/etc/hosts.real",
    }
    names, etc_links = sandbox.etc_entries(
        exists=lambda p: p in links or p == "/etc/services",
        readlink=links.get,
        realpath=lambda p: real.get(p, p),
    )
    assert etc_links == [
        ("localtime", "/usr/share/zoneinfo/Europe/Paris"),
        ("timezone", "/usr/share/zoneinfo/tz"),
    ]
    assert names == ["hosts", "resolv.conf", "services"]
