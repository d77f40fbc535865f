"""A stop that meets a monitor on its way out: the run is over, not failed."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

from agentfarm.backends.local import handle, monitor_spec, procs
from agentfarm.backends.local.handle import LocalHandle
from agentfarm.domain import errors, models

#: A stand-in monitor: it listens on the control socket, takes one connection, closes it with
#: the request unread (the peer sees a reset), then lingers ``argv[2]`` seconds and exits.
RESETTING_MONITOR = """
import socket, sys, time
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(1)
print("ready", flush=True)
conn, _ = listener.accept()
time.sleep(0.2)  # the request is in the socket's buffer by now
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
conn.close()
listener.close()
time.sleep(float(sys.argv[2]))
"""


async def _monitor(tmp_path: Path, linger: float) -> tuple[LocalHandle, asyncio.subprocess.Process]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RESETTING_MONITOR,
        str(run_dir / monitor_spec.CONTROL_SOCK),
        str(linger),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    identity = {"pid": proc.pid, "start_time": procs.start_time(proc.pid)}
    (run_dir / monitor_spec.MONITOR_JSON).write_text(json.dumps(identity))
    return LocalHandle(models.Run(spec=models.AgentSpec(repo="/r", prompt="p")), run_dir), proc


async def test_a_stop_reset_by_a_monitor_that_then_exits_is_done(tmp_path: Path) -> None:
    handle, proc = await _monitor(tmp_path, linger=0.3)
    await handle.stop(grace=1)  # waits for the monitor's exit (a pidfd) instead of failing
    assert await asyncio.wait_for(proc.wait(), 5) == 0


async def test_a_stop_reset_by_a_monitor_that_stays_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agentfarm.backends.local.handle.STOP_SETTLE", 0.5)
    handle, proc = await _monitor(tmp_path, linger=30)
    try:
        with pytest.raises(errors.BackendError, match="cannot reach the monitor"):
            await handle.stop(grace=1)
    finally:
        proc.kill()
        await proc.wait()


def test_a_reset_is_what_the_stand_in_gives(tmp_path: Path) -> None:
    """The stand-in really resets: the race seen under ``kill -9`` faults (ECONNRESET)."""
    path = tmp_path / "s"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    client.sendall(b'{"op": "stop"}\n')
    conn, _ = listener.accept()
    conn.close()  # the request unread
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    client.close()
    listener.close()


@pytest.mark.parametrize("body", ["", "{", '{"pid": 1}'])
def test_identity_files_a_crash_left_empty_or_torn_name_no_process(
    tmp_path: Path, body: str
) -> None:
    # They are not synced to disk (``monitor_spec.write_json``): after an OS crash they may
    # be empty; the processes they named are gone then anyway.
    for name in (monitor_spec.MONITOR_JSON, monitor_spec.SANDBOX_JSON):
        (tmp_path / name).write_text(body)
    assert handle.read_identity(tmp_path) is None
    handle.kill_orphans(tmp_path, "0123456789ab")  # nothing to kill, and no error
