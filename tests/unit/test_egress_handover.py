"""The egress proxy forked ahead of need (``egress.fork_proxy``): what it holds while it waits,
the handover of its run (the policy and descriptors over its socket pair), its exit when no
run comes, and the monitor's side (``monitor_egress.EgressProxy``): denials spooled, a crash
told, a proxy no run needed reaped.

Real processes (forked from this test), real sockets: all on a unix socket in tmp_path or a
socket pair; no connection leaves the proxy (every request tried is one it refuses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfarm.backends.local import egress, egress_proxy, monitor_egress, spool
from agentfarm.backends.local.frames import SpoolWriter
from agentfarm.domain import egress as policies
from tests.unit.test_local_monitor import spec

POLICY = policies.build_policy(["pypi.org"], model_url=None, remote=None, control=[])
DENIED = b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: 169.254.169.254:80\r\n\r\n"


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError("no Uid line")


def wait_until(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def expected_uid() -> int:
    return egress.PROXY_UID if os.geteuid() == 0 else os.geteuid()


def waiting(pid: int) -> bool:
    """Named, warmed up and (as root) without privileges: next, it blocks on its pair."""
    name = Path(f"/proc/{pid}/comm").read_bytes().strip()
    return name == egress.PROXY_NAME and uid_of(pid) == expected_uid()


def reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def proxy() -> Iterator[tuple[int, socket.socket]]:
    pid, channel = egress.fork_proxy()
    yield pid, channel
    channel.close()
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_the_handover_carries_the_policy_and_the_descriptors(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    report_r, report_w = os.pipe()
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "egress.sock"))
    listener.listen(1)
    # A policy larger than one read of the pair: it arrives whole, and nothing after it is lost.
    big = {"rules": [[f"h{i}.example", [443]] for i in range(5000)], "model": None}
    with ours, theirs, listener:
        egress.hand_over(ours, big, report_w, log, listener)
        got = egress.receive_handover(theirs)
        assert got is not None and got.policy == big and got.listener is not None
        os.write(got.report_fd, b"x")
        assert os.read(report_r, 1) == b"x"
        os.write(got.log_fd, b"logged")
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "egress.sock"))
            got.listener.accept()[0].close()
        for fd in (got.report_fd, got.log_fd, report_r, report_w, log):
            os.close(fd)
        got.listener.close()
    assert (tmp_path / "log").read_bytes() == b"logged"


def test_netns_the_listener_follows_from_the_launcher_child() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    report_r, report_w = os.pipe()
    with ours, theirs, socket.socket() as listener:
        egress.hand_over(ours, {"rules": []}, report_w, 2, None)
        # What egress.private_network sends, from the launcher child's copy of our end.
        socket.send_fds(ours, [b"L"], [listener.fileno()])
        got = egress.receive_handover(theirs)
        assert got is not None and got.listener is None
        received = egress.receive_listener(theirs)
        assert received is not None and received.family == socket.AF_INET
        received.close()
        for fd in (got.report_fd, got.log_fd, report_r, report_w):
            os.close(fd)
        ours.close()  # the agent's start is over: nothing more comes
        assert egress.receive_listener(theirs) is None


def test_a_closed_pair_is_no_handover() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.close()
    with theirs:
        assert egress.receive_handover(theirs) is None


def fd_targets(pid: int | str) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor
            if int(fd) > 2:
                found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


def test_a_waiting_proxy_has_dropped_its_privileges_and_holds_nothing_of_ours() -> None:
    leak_r, leak_w = os.pipe()  # inheritable, like anything a monitor might hold by mistake
    os.set_inheritable(leak_r, True)
    os.set_inheritable(leak_w, True)
    pid, channel = egress.fork_proxy()
    try:
        wait_until(lambda: waiting(pid))
        # Before any run reached it: no privilege (as root), and only its own descriptors
        # beyond stdin/stdout (/dev/null) and stderr: its pair, its event loop's, no file.
        assert uid_of(pid) == expected_uid()
        targets = fd_targets(pid)
        # anon_inode names (an epoll's) are the same in every process: not ours to compare.
        ours = {t for t in fd_targets("self") if not t.startswith("anon_inode:")} - {os.devnull}
        assert not targets & ours, targets & ours
        assert all(t.startswith(("socket:", "anon_inode:", os.devnull)) for t in targets), targets
    finally:
        os.close(leak_r)
        os.close(leak_w)
        channel.close()
        assert reap(pid) == 0


def test_a_waiting_proxy_exits_cleanly_when_its_pair_closes(
    proxy: tuple[int, socket.socket],
) -> None:
    pid, channel = proxy
    wait_until(lambda: waiting(pid))
    channel.close()
    assert reap(pid) == 0


def test_a_waiting_proxy_dies_with_its_monitor_after_dropping_privileges() -> None:
    # The parent-death signal is cleared by a credential change: it is set again after it.
    found_r, found_w = os.pipe()
    middle = os.fork()
    if middle == 0:  # the monitor
        code = 1
        try:
            pid, _ = egress.fork_proxy()
            wait_until(lambda: waiting(pid))
            os.write(found_w, str(pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(found_w)
    pid = int(os.read(found_r, 32) or b"0")
    os.close(found_r)
    assert reap(middle) == 0 and pid

    def dead() -> bool:
        try:  # reparented: gone, or a zombie of whoever adopted it
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    wait_until(dead, timeout=10)


class Run:
    """A monitor's side of a run: its directory, spool and selector."""

    def __init__(self, tmp_path: Path, network: str) -> None:
        self.dir = tmp_path
        self.dirfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
        self.spool_fd = os.open(tmp_path / "spool", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.sel = selectors.DefaultSelector()
        policy = POLICY.to_json()
        self.spec = spec(run_dir=str(tmp_path), network=network, egress_policy=policy)
        self.spool = SpoolWriter(self.spool_fd)

    def proxy(self, waiting: monitor_egress.Waiting | None) -> monitor_egress.EgressProxy:
        return monitor_egress.EgressProxy(self.spec, self.sel, self.dirfd, self.spool, waiting)

    def records(self) -> list[spool.Record]:
        return spool.read_all(self.dir / "spool")

    def close(self) -> None:
        self.sel.close()
        os.close(self.spool_fd)
        os.close(self.dirfd)


@pytest.mark.parametrize("ahead", [True, False], ids=["idle-monitor", "own-monitor"])
def test_denials_reach_the_spool_and_a_crash_is_told(tmp_path: Path, ahead: bool) -> None:
    run = Run(tmp_path, "allowlist")
    assert run.spec.via_bridge  # not root, or root with the bridge: the monitor listens
    proxy = run.proxy(egress.fork_proxy() if ahead else None)
    try:
        proxy.start()
        assert proxy.channel is None  # the launcher child makes no namespace in bridge mode
        proxy.after_spawn()
        assert proxy.pid is not None
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / egress.SOCKET_NAME))
            client.sendall(DENIED)
            assert client.recv(4096).startswith(b"HTTP/1.1 403")
        wait_until(lambda: bool(run.sel.select(0)))
        proxy.read_denials()
        [denial] = [json.loads(r.data) for r in run.records() if r.kind == "egress"]
        assert (denial["host"], denial["port"]) == ("169.254.169.254", 80)
        os.kill(proxy.pid, signal.SIGKILL)  # a crash
        wait_until(lambda: bool(run.sel.select(0)))
        proxy.read_denials()
        notices = [r.data for r in run.records() if r.kind == "notice"]
        assert any(b"the egress proxy stopped" in n for n in notices), notices
    finally:
        proxy.close()
        run.close()


@pytest.mark.parametrize("network", ["open", "none"])
def test_a_run_without_allowlist_lets_the_waiting_proxy_go(tmp_path: Path, network: str) -> None:
    run = Run(tmp_path, network)
    pid, channel = egress.fork_proxy()
    proxy = run.proxy((pid, channel))
    try:
        proxy.start()
        assert proxy.channel is None and proxy.pid is None and proxy.report_fd is None
        proxy.after_spawn()
        with pytest.raises(ChildProcessError):  # reaped: no zombie left
            os.waitpid(pid, os.WNOHANG)
    finally:
        proxy.close()
        run.close()
    assert not [r for r in run.records() if r.kind == "notice"]


def test_a_monitor_that_gets_no_run_discards_its_proxy_cleanly() -> None:
    pid, channel = egress.fork_proxy()
    wait_until(lambda: waiting(pid))
    monitor_egress.discard((pid, channel))
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    monitor_egress.discard(None)


def test_only_an_idle_monitor_forks_ahead() -> None:
    assert monitor_egress.prepare(["x"]) is None
    waiting = monitor_egress.prepare([monitor_egress.IDLE])
    assert waiting is not None
    monitor_egress.discard(waiting)


def test_a_proxy_without_privileges_still_knows_the_hosts_own_addresses(tmp_path: Path) -> None:
    # It reads them after the drop (at the handover, so they are current): a private address
    # of this host named in the config is still this host, refused like loopback.
    own = sorted(a for a in egress_proxy.local_addresses() if a.count(".") == 3)
    own = [a for a in own if not a.startswith("127.")]
    if not own:
        pytest.skip("this host has no IPv4 address besides loopback")
    run = Run(tmp_path, "allowlist")
    policy = policies.build_policy([f"{own[0]}:9"], model_url=None, remote=None, control=[])
    run.spec = dataclasses.replace(run.spec, egress_policy=policy.to_json())
    proxy = run.proxy(egress.fork_proxy())
    try:
        wait_until(lambda: proxy.pid is not None and waiting(proxy.pid))
        proxy.start()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / egress.SOCKET_NAME))
            client.sendall(f"CONNECT {own[0]}:9 HTTP/1.1\r\n\r\n".encode())
            assert client.recv(4096).startswith(b"HTTP/1.1 403")
        wait_until(lambda: bool(run.sel.select(0)))
        proxy.read_denials()
        [denial] = [json.loads(r.data) for r in run.records() if r.kind == "egress"]
        assert "own address" in denial["reason"], denial
    finally:
        proxy.close()
        run.close()


def test_a_proxy_that_died_while_it_waited_is_replaced_at_the_handover(tmp_path: Path) -> None:
    run = Run(tmp_path, "allowlist")
    dead, channel = egress.fork_proxy()
    os.kill(dead, signal.SIGKILL)
    wait_until(lambda: Path(f"/proc/{dead}/stat").read_text().split(") ")[1][0] == "Z")
    proxy = run.proxy((dead, channel))
    try:
        proxy.start()
        proxy.after_spawn()
        assert proxy.pid is not None and proxy.pid != dead
        with pytest.raises(ChildProcessError):  # the dead one was reaped
            os.waitpid(dead, os.WNOHANG)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / egress.SOCKET_NAME))
            client.sendall(DENIED)
            assert client.recv(4096).startswith(b"HTTP/1.1 403")
    finally:
        proxy.close()
        run.close()
