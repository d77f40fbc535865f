"""`agentfarm forge` and `agentfarm pipeline` against a real server, and a fake forge for the
token test: the token goes in on stdin and never comes back out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.forge import FakeForge

from .server import Server

REPO = "alice/proj"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", {}, tmp_path / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture
def fake_forge(tmp_path: Path) -> Iterator[FakeForge]:
    with FakeForge(tmp_path / "forge", kind="forgejo") as fake:
        fake.create_repo(REPO)
        # Unlabeled: the server's pipeline, which polls this forge, has nothing to dispatch.
        fake.open_issue(REPO, "Add hello", labels=["bug"])
        yield fake


def test_forge_add_ls_test_rm_and_the_kill_switch(server: Server, fake_forge: FakeForge) -> None:
    added = server.cli(
        "forge", "add", "home", "--kind", "forgejo", "--url", fake_forge.api_url,
        "--token-secret", "FORGEJO_TOKEN", "--token-stdin", "--repo", REPO, "--poll", "30",
        "--draft", "--no-closes",
        input=fake_forge.token + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert f"{server.url}/api/forges/home/webhook" in added.stdout
    secret = added.stdout.split("secret: ")[1].split()[0]
    assert len(secret) >= 32
    listed = server.cli("forge", "ls")
    assert "home" in listed.stdout and REPO in listed.stdout and "30s" in listed.stdout
    shown = json.loads(server.cli("forge", "show", "home").stdout)
    assert shown["draft"] is True and shown["closes_issue"] is False
    everything = listed.stdout + json.dumps(shown) + server.cli("forge", "ls", "--json").stdout
    assert secret not in everything and fake_forge.token not in everything
    tested = server.cli("forge", "test", "home")
    assert tested.returncode == 0, tested.stderr
    assert f"token works: can read {REPO} (0 open issue(s) labeled 'agentfarm')" in tested.stdout
    # A wrong token: the forge's answer in words, and a failing exit.
    assert server.cli("secret", "set", "FORGEJO_TOKEN", input="wrong\n").returncode == 0
    failed = server.cli("forge", "test", "home")
    assert failed.returncode == 1 and "token test failed" in failed.stderr
    # Validation errors are one line saying what to fix.
    bad = server.cli(
        "forge", "add", "other", "--kind", "forgejo", "--url", fake_forge.api_url,
        "--token-secret", "NOT_STORED", "--repo", REPO,
    )  # fmt: skip
    assert bad.returncode == 1 and "agentfarm secret set NOT_STORED" in bad.stderr
    # The kill switch.
    paused = server.cli("pipeline", "pause")
    assert paused.returncode == 0 and "paused" in paused.stdout
    view = json.loads(server.cli("pipeline", "ls", "--json").stdout)
    assert view["paused"] is True and view["attempts"] == []
    assert "paused" in server.cli("pipeline", "ls").stdout
    assert "resumed" in server.cli("pipeline", "resume").stdout
    assert json.loads(server.cli("pipeline", "ls", "--json").stdout)["paused"] is False
    removed = server.cli("forge", "rm", "home")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(server.cli("forge", "ls", "--json").stdout) == []
    names = json.loads(server.cli("secret", "ls", "--json").stdout)
    assert names == ["FORGEJO_TOKEN"]
    assert fake_forge.token not in server.log.read_text()
