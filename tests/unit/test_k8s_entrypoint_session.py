"""The entrypoint's ``session-out`` and ``session-in`` (deploy/agent/entrypoint.py), run here
as plain processes: the agent's session files leave one HOME as a bundle the control plane
accepts, and go into another; what the agent planted (links, other files, a FIFO) stays
behind, and a hostile bundle writes nothing outside the session's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from agentfarm.backends.kubernetes import sessions
from tests.unit.test_k8s_entrypoint import ENTRYPOINT

SESSION = "0b7c5a9e-6f7d-4c1e-9a55-2f0e8d7c6b5a"
PROJECT = "projects/-workspace"


def entrypoint(home: Path, command: str, stdin: bytes = b"") -> bytes:
    env = dict(os.environ, HOME=str(home), AGENTFARM_WORKSPACE="/workspace")
    done = subprocess.run(
        [sys.executable, str(ENTRYPOINT), command], input=stdin, env=env,
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def write(home: Path, name: str, data: bytes) -> Path:
    path = home / ".claude" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    write(home, f"{PROJECT}/{SESSION}.jsonl", b'{"type":"user"}\n' * 1000)
    write(home, f"{PROJECT}/{SESSION}/tool-results/toolu_01.txt", b"a long tool output\n")
    # Not the session's: other state, a link to a secret file, a FIFO, an odd name.
    write(home, "settings.json", b'{"hooks": {}}')
    (tmp_path / "secret").write_text("the run's prompt")
    os.symlink(tmp_path / "secret", home / ".claude" / PROJECT / f"{'1' * 8}-{SESSION[9:]}.jsonl")
    os.mkfifo(home / ".claude" / PROJECT / f"{'2' * 8}-{SESSION[9:]}.jsonl")
    write(home, f"{PROJECT}/notes.jsonl", b"x")
    return home


def test_the_session_goes_out_as_a_bundle_the_control_plane_takes_and_back_in(
    home: Path, tmp_path: Path
) -> None:
    raw = entrypoint(home, "session-out")
    bundle = sessions.parse(raw)
    assert sorted(name for name, _ in bundle.files) == [
        f"{PROJECT}/{SESSION}.jsonl", f"{PROJECT}/{SESSION}/tool-results/toolu_01.txt",
    ]  # fmt: skip
    assert bundle.size == 16 * 1000 + 19 and len(bundle.packed) < bundle.size // 10
    other = tmp_path / "other"
    other.mkdir()
    reply = json.loads(entrypoint(other, "session-in", bundle.to_bytes()))
    assert reply == {"ok": True, "files": 2}
    claude = other / ".claude"
    assert (claude / PROJECT / f"{SESSION}.jsonl").read_bytes() == b'{"type":"user"}\n' * 1000
    assert sorted(str(p.relative_to(claude)) for p in claude.rglob("*") if p.is_file()) == [
        f"{PROJECT}/{SESSION}.jsonl", f"{PROJECT}/{SESSION}/tool-results/toolu_01.txt",
    ]  # fmt: skip


def test_an_empty_home_gives_an_empty_bundle(tmp_path: Path) -> None:
    assert sessions.parse(entrypoint(tmp_path, "session-out")).files == ()


def bundle_of(files: list[tuple[str, bytes]], **header: object) -> bytes:
    packed = zlib.compress(b"".join(data for _, data in files))
    head = {"files": [{"name": n, "size": len(d)} for n, d in files], "size": len(packed)}
    return json.dumps(head | header).encode() + b"\n" + packed


@pytest.mark.parametrize(
    ("bundle", "why"),
    [
        (bundle_of([(f"{PROJECT}/../../../.bashrc", b"x")]), "unexpected file name"),
        (bundle_of([("settings.json", b"{}")]), "unexpected file name"),
        (bundle_of([(f"/etc/{SESSION}.jsonl", b"x")]), "unexpected file name"),
        (bundle_of([(f"{PROJECT}/{SESSION}.jsonl", b"xy")], size=3), "cut short"),
        (b'{"files": "x"}\n', "header"),
    ],
)
def test_a_hostile_bundle_writes_nothing(tmp_path: Path, bundle: bytes, why: str) -> None:
    reply = json.loads(entrypoint(tmp_path, "session-in", bundle))
    assert reply["ok"] is False and why in reply["error"], reply
    assert not (tmp_path / ".claude" / PROJECT).exists()
    assert not (tmp_path.parent / ".bashrc").exists()


def test_a_planted_link_on_the_way_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    os.symlink(elsewhere, home / ".claude" / "projects")
    reply = json.loads(
        entrypoint(home, "session-in", bundle_of([(f"{PROJECT}/{SESSION}.jsonl", b"x")]))
    )
    assert reply["ok"] is False and "not a directory" in reply["error"]
    assert list(elsewhere.iterdir()) == []


def test_a_session_over_the_limit_is_an_error_line_not_a_bundle(tmp_path: Path) -> None:
    big = tmp_path / ".claude" / PROJECT / f"{SESSION}.jsonl"
    big.parent.mkdir(parents=True)
    with big.open("wb") as fh:  # sparse: quick to write and to read
        fh.truncate(sessions.LIMIT + 1)
    raw = entrypoint(tmp_path, "session-out")
    assert json.loads(raw) == {
        "error": "the agent's session files are over 64 MiB or 4096 files, the most carried "
        "out of a pod"
    }
    with pytest.raises(ValueError, match="over 64 MiB or 4096 files"):
        sessions.parse(raw)
