"""How a run's monitor starts the agent: the command line (bubblewrap, or the agent alone
when unsandboxed), its working directory, the host paths to stage and the agent's environment
(:func:`build_launch`, pure), then the process itself (:func:`spawn`)."""

from __future__ import annotations

import functools
import os
import socket
import subprocess

from agentfarm.backends.local import (
    cgroups,
    egress,
    handover,
    monitor_spec,
    priority,
    sandbox,
    stage,
)


def agent_env(spec: monitor_spec.MonitorSpec, home: str) -> dict[str, str]:
    """The agent's whole environment: a fixed base, the command's, the credentials, and the
    proxy variables when the sandbox reaches out only through the egress proxy."""
    command = spec.launch.command
    env = sandbox.agent_env(command.env, spec.launch.credentials, home=home)
    if spec.allowlist:
        env.update(egress.proxy_env())
    return env


def _staging(spec: monitor_spec.MonitorSpec) -> tuple[list[str], dict[str, str]]:
    """Sources to stage (when root drops to another uid) and host path -> staged path.

    Unsandboxed runs are not staged (the staging tmpfs would hide the host's /tmp from the
    agent): there the run directory's parents must be traversable by the sandbox uid.
    """
    if spec.uid is None or spec.mode == "none":
        return [], {}
    sources = [spec.workspace, spec.home, spec.passwd, spec.group]
    sources += [b.source for b in spec.binds]
    if spec.via_bridge:
        sources += [spec.egress_socket, egress.BRIDGE]
    unique = list(dict.fromkeys(sources))
    return unique, {src: stage.staged_path(i) for i, src in enumerate(unique)}


def build_launch(
    spec: monitor_spec.MonitorSpec, status_fd: int
) -> tuple[list[str], str | None, list[str], dict[str, str]]:
    """argv, working directory, the sources to stage and the environment for this spec."""
    sources, staged = _staging(spec)

    def at(path: str) -> str:
        return staged.get(path, path)

    if spec.mode == "none":
        return spec.argv, at(spec.workspace), sources, agent_env(spec, home=at(spec.home))
    binds = list(spec.binds)
    command = spec.argv
    if spec.via_bridge:
        binds += [
            sandbox.Bind(spec.egress_socket, egress.SANDBOX_SOCKET),
            sandbox.Bind(egress.BRIDGE, egress.SANDBOX_BRIDGE),
        ]
        port = str(egress.SANDBOX_PORT)
        bridge = [spec.python, "-S", "-I", egress.SANDBOX_BRIDGE, egress.SANDBOX_SOCKET, port]
        command = [*bridge, "--", *spec.argv]
    config = sandbox.SandboxConfig(
        workspace=at(spec.workspace),
        home=at(spec.home),
        passwd=at(spec.passwd),
        group=at(spec.group),
        # With netns, the launcher child has made the namespace: bubblewrap stays in it.
        network=spec.network == "open" or spec.via_netns,
        etc=spec.etc,
        etc_links=spec.etc_links,
        extra_binds=tuple(sandbox.Bind(at(b.source), b.dest, b.writable) for b in binds),
        status_fd=status_fd,
        bwrap=spec.bwrap,
        usr_links=spec.usr_links,
    )
    return sandbox.bwrap_argv(config, command), None, sources, agent_env(spec, sandbox.HOME)


def spawn(
    spec: monitor_spec.MonitorSpec,
    status_fd: int,
    cgroup: cgroups.RunCgroup,
    channel: socket.socket | None,
    gate: tuple[int, bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the agent. Between fork and exec the launcher child, with ``channel``, makes the
    sandbox's network namespace and hands the proxy its listener there
    (``egress.private_network``), stages its mounts, and joins the run's cgroups: last, as a
    first move into a cgroup may wait for the kernel (the grace period
    ``cgroups.warm_moves`` started as the launch began) while the rest is done meanwhile.
    With a ``gate`` it then waits for the go (``handover.wait_for_go``: the workspace's branch
    is made). Last, as root, it drops to the sandbox uid (``drop_to``): what it execs,
    bubblewrap or the agent, never has root's rights."""
    argv, cwd, sources, env = build_launch(spec, status_fd)
    stage.load()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    go = None if gate is None else functools.partial(handover.wait_for_go, *gate)

    def preexec() -> None:
        try:
            if channel is not None:
                egress.private_network(channel)
            if sources:
                stage.stage(sources)
            cgroup.join()
            if go is not None:
                go()
            if cwd is not None:
                # Here rather than Popen(cwd=...), which would chdir before we join the cgroups.
                os.chdir(cwd)
            # Last, so that the start itself is not slowed: the agent's priority, below the
            # control plane's (``priority``), and its session's (the monitor's too).
            priority.lower_priority(spec.limits.cpu_weight)
            if spec.uid is not None:
                drop_to(spec.uid, spec.gid if spec.gid is not None else spec.uid)
        except BaseException as exc:
            os.write(err_w, f"{type(exc).__name__}: {exc}".encode())
            raise

    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=(status_fd,) if spec.mode != "none" else (),
            preexec_fn=preexec,
            start_new_session=spec.mode == "none",
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = os.read(err_r, 4096).decode(errors="replace") or str(exc)
        if detail.startswith(handover.NotLaunched.__name__):
            raise handover.NotLaunched(detail) from None
        raise RuntimeError(f"cannot start the agent: {detail}") from None
    finally:
        os.close(err_w)
        os.close(err_r)


def drop_to(uid: int, gid: int) -> None:
    """Become ``uid``:``gid`` for good, with no supplementary groups (real, effective and
    saved ids alike: the kernel clears every capability of a root process that does this).
    In the launcher child, rather than an exec of ``setpriv`` (a millisecond of the launch)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
