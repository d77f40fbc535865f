"""Build the command line that starts an agent inside bubblewrap (pure: no I/O, but for
:func:`etc_entries`, which looks at the host's /etc).

The sandbox sees a read-only /usr (with the /bin, /lib, /lib64 symlinks of a merged-/usr
system), a curated /etc (generated passwd and group, a few host files read-only), private
/proc, /dev and /tmp, the run's HOME and workspace read-write, and whatever extra read-only
binds the launch needs (the agent's package directory, the source repository's objects that
a ``git clone --shared`` points into). Nothing else of the host is visible.

The environment is not passed with ``--setenv``: values there would show in ``ps``. The
monitor execs bubblewrap with exactly the agent's environment instead, which it passes
through unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: In-sandbox locations: fixed, so they do not reveal the host's layout.
WORKSPACE = "/workspace"
HOME = "/home/agent"
USER = "agent"

#: Host /etc entries bound read-only when they exist; everything else of /etc stays hidden.
ETC_ALLOW = (
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "localtime",
    "timezone",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "mime.types",
    "protocols",
    "services",
)


@dataclass(frozen=True)
class Bind:
    source: str
    dest: str
    writable: bool = False


@dataclass(frozen=True)
class SandboxConfig:
    workspace: str
    home: str
    #: Generated /etc/passwd and /etc/group on the host.
    passwd: str
    group: str
    network: bool
    #: Host /etc entries that exist (the caller filters :data:`ETC_ALLOW`).
    etc: tuple[str, ...] = ()
    #: Host /etc entries that are symlinks into /usr, as (name, absolute target): made
    #: symlinks again inside (see :func:`etc_entries`).
    etc_links: tuple[tuple[str, str], ...] = ()
    extra_binds: tuple[Bind, ...] = ()
    status_fd: int | None = None
    bwrap: str = "bwrap"
    usr_links: tuple[str, ...] = ("bin", "lib", "lib64", "sbin")
    hostname: str = "agentfarm"


def etc_entries(
    exists: Callable[[str], bool] = os.path.lexists,
    readlink: Callable[[str], str | None] | None = None,
    realpath: Callable[[str], str] = os.path.realpath,
) -> tuple[list[str], list[tuple[str, str]]]:
    """The :data:`ETC_ALLOW` entries this host has: names to bind, and (name, target) of
    those that are symlinks into /usr, which the sandbox sees already.

    bubblewrap binds what a symlink points to, so a bound ``/etc/localtime`` is a plain
    file inside: then the agent's runtime cannot read the zone's name from the link and
    searches all of ``/usr/share/zoneinfo`` for a file with the same bytes (Claude Code's
    ICU did: about 2,700 system calls before its first line). The same link inside avoids it.
    """
    read = readlink or _readlink
    names, links = [], []
    for name in ETC_ALLOW:
        path = f"/etc/{name}"
        if not exists(path):
            continue
        target = read(path)
        if target is not None:
            target = os.path.normpath(os.path.join("/etc", target))
            # The whole chain must end in /usr (visible read-only inside), never in /etc.
            if target.startswith("/usr/") and realpath(path).startswith("/usr/"):
                links.append((name, target))
                continue
        names.append(name)
    return names, links


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None  # not a symlink


def bwrap_argv(config: SandboxConfig, command: list[str]) -> list[str]:
    """The full argv: bwrap and its options, then the agent's command."""
    argv = [config.bwrap, "--ro-bind", "/usr", "/usr"]
    for name in config.usr_links:
        argv += ["--symlink", f"usr/{name}", f"/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/var/tmp"]  # noqa: S108
    argv += ["--dir", "/etc"]
    for name in config.etc:
        argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for name, target in config.etc_links:
        argv += ["--symlink", target, f"/etc/{name}"]
    argv += ["--ro-bind", config.passwd, "/etc/passwd", "--ro-bind", config.group, "/etc/group"]
    argv += ["--bind", config.home, HOME, "--bind", config.workspace, WORKSPACE]
    for bind in config.extra_binds:
        argv += ["--bind" if bind.writable else "--ro-bind", bind.source, bind.dest]
    argv += ["--chdir", WORKSPACE]
    argv += ["--unshare-user", "--disable-userns"]  # bwrap 0.8: the second needs the first
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", config.hostname]
    if not config.network:
        argv.append("--unshare-net")
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if config.status_fd is not None:
        argv += ["--json-status-fd", str(config.status_fd)]
    argv.append("--")
    return argv + command


def passwd_file(uid: int, gid: int) -> str:
    return (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{USER}:x:{uid}:{gid}:agentfarm agent:{HOME}:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )


def group_file(gid: int) -> str:
    return f"root:x:0:\n{USER}:x:{gid}:\nnogroup:x:65534:\n"


def agent_env(
    command_env: Mapping[str, str], secrets: Mapping[str, str], *, home: str, user: str = USER
) -> dict[str, str]:
    """The agent's whole environment: a fixed base, the command's, then the secrets."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "GIT_AUTHOR_NAME": "agentfarm",
        "GIT_AUTHOR_EMAIL": "agent@agentfarm.invalid",
        "GIT_COMMITTER_NAME": "agentfarm",
        "GIT_COMMITTER_EMAIL": "agent@agentfarm.invalid",
        "GIT_TERMINAL_PROMPT": "0",
    }
    env.update(command_env)
    env.update(secrets)
    return env
