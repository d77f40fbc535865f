from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest

from agentfarm.backends.base import ExitInfo
from agentfarm.backends.local import frames, spool


def write_frames(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    writer = spool.SpoolWriter(fd)
    writer.write("started", b"{}")
    writer.write("stdout", b"one")
    writer.write("stderr", b"two")
    writer.notice("three")
    writer.write("exit", spool.encode_exit(ExitInfo(exit_code=3, stopped=True)))
    os.close(fd)


def test_frames_round_trip_with_cursors(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    write_frames(path)
    records = spool.read_all(path)
    assert [r.kind for r in records] == ["started", "stdout", "stderr", "notice", "exit"]
    assert records[-1].cursor == path.stat().st_size
    assert records[1].cursor - records[0].cursor == spool.HEADER.size + 3
    assert records[-1].exit == ExitInfo(exit_code=3, stopped=True)


def test_torn_tail_is_left_for_later() -> None:
    frame = spool.encode("stdout", b"hello")[0]
    records, used = spool.parse(frame + frame[:7], 100)
    assert used == len(frame)
    assert [(r.cursor, r.data) for r in records] == [(100 + len(frame), b"hello")]


def test_oversized_payload_is_split(monkeypatch: object) -> None:
    frames = spool.encode("stdout", b"x" * (spool.MAX_PAYLOAD + 5))
    assert len(frames) == 2
    assert len(frames[1]) == spool.HEADER.size + 5


async def test_follow_resumes_from_a_middle_cursor(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    write_frames(path)
    everything = [r async for r in spool.follow(path, 0, _alive)]
    middle = everything[1].cursor
    rest = [r async for r in spool.follow(path, middle, _alive)]
    assert rest == everything[2:]


async def test_follow_sees_live_appends(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    writer = spool.SpoolWriter(fd)

    async def produce() -> None:
        for i in range(5):
            await asyncio.sleep(0.01)
            writer.write("stdout", str(i).encode())
        writer.write("exit", spool.encode_exit(ExitInfo(exit_code=0)))

    task = asyncio.create_task(produce())
    got = [r.data async for r in spool.follow(path, 0, _alive) if r.kind == "stdout"]
    await task
    os.close(fd)
    assert got == [b"0", b"1", b"2", b"3", b"4"]


async def test_dead_writer_without_exit_frame_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.write_bytes(spool.encode("stdout", b"hi")[0] + b"o\x00")  # a torn tail

    async def dead() -> bool:
        return False

    opts = spool.FollowOptions(alive_every=0.0)
    records = [r async for r in spool.follow(path, 0, dead, opts)]
    assert [r.kind for r in records] == ["stdout", "exit"]
    last = records[-1]
    assert last.exit is not None
    assert last.exit.lost
    assert "no exit record" in (last.exit.error or "")
    assert last.cursor > records[0].cursor


async def test_missing_spool_and_dead_writer_is_lost(tmp_path: Path) -> None:
    async def dead() -> bool:
        return False

    records = [r async for r in spool.follow(tmp_path / "nope", 0, dead)]
    assert records[0].exit is not None
    assert records[0].exit.lost


async def _alive() -> bool:
    return True


async def test_a_frame_bigger_than_a_read_is_read_whole_not_grown_a_read_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Growing the unread tail by one read at a time copied it again at every read
    # (quadratic, and about three copies of a 64 MiB line at once in the server).
    path = tmp_path / "spool"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    writer = spool.SpoolWriter(fd)
    big = b"y" * 300_000
    writer.write("stdout", big)
    writer.write("exit", spool.encode_exit(ExitInfo(exit_code=0)))
    os.close(fd)
    sizes: list[int] = []
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        sizes.append(size)
        return real_pread(fd, size, offset)

    monkeypatch.setattr(spool.os, "pread", pread)
    options = spool.FollowOptions(read_size=4096)
    records = [r async for r in spool.follow(path, 0, _alive, options)]
    assert [(r.kind, len(r.data)) for r in records[:1]] == [("stdout", len(big))]
    assert records[0].data == big and records[-1].kind == "exit"
    assert len(sizes) <= 3, sizes  # a header's worth, then the rest of the frame at once


def test_a_full_disk_drops_a_record_whole_and_the_exit_frame_waits_for_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC halfway through a record: the torn part is cut off, ``full`` says so, and the
    exit frame, tried again, lands once there is space, right after the last whole record."""
    path = tmp_path / "spool"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    writer = spool.SpoolWriter(fd)
    assert writer.write("stdout", b"kept")
    real_write = os.write
    space = {"left": 5}

    def short_disk(target: int, data: bytes | memoryview) -> int:
        if space["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = real_write(target, bytes(data)[: space["left"]])
        space["left"] -= written
        return written

    monkeypatch.setattr(os, "write", short_disk)
    assert not writer.write("stdout", b"x" * 100)  # 5 bytes went in, then the disk was full
    assert writer.full
    monkeypatch.setattr(time, "sleep", lambda _s: space.update(left=1 << 20))  # space returns
    writer.write_exit(frames.exit_payload(None, error=frames.DISK_FULL))
    os.close(fd)
    records, used = spool.parse(path.read_bytes(), 0)
    assert used == path.stat().st_size  # nothing torn left behind
    assert [r.kind for r in records] == ["stdout", "exit"]
    assert records[0].data == b"kept"
    assert records[1].exit is not None and records[1].exit.error == frames.DISK_FULL
