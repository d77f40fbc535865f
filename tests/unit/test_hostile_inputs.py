"""Hostile input in every field that reaches git, the filesystem or a forge: refused with a
clear 4xx in the one error shape, never a 5xx, never used."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from agentfarm.backends.local import git as local_git
from agentfarm.domain import models
from agentfarm.pipeline.forges import webhooks
from agentfarm.store import mapping
from agentfarm.web.bodylimit import MAX_BODY
from tests.unit.pipeline_helpers import SECRET, World, world

from .conftest import AppFactory
from .test_web_errors import assert_error

__all__ = ["world"]  # the fixture

SPEC = {"repo": "https://example.invalid/o/r.git", "prompt": "hi"}


def refused(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    "repo",
    ["--upload-pack=touch /tmp/pwned", "-c core.sshCommand=x", "ext::sh -c touch% /tmp/x",
     "EXT::sh", "a\nb", "a\x00b", "https://user:pw@example.invalid/o/r.git"],
)  # fmt: skip
async def test_a_hostile_repo_is_refused(app_client: AppFactory, repo: str) -> None:
    async with app_client() as client:
        for path, body in (
            ("/api/configs", {"name": "x", "repo": repo}),
            ("/api/runs", {"spec": {**SPEC, "repo": repo}}),
        ):
            refused(await client.post(path, json=body))


@pytest.mark.parametrize(
    "branch",
    ["-x", "--upload-pack=x", "a..b", "refs/heads/main", "HEAD", "@", "x.lock", "a/.b",
     "a b", "a~1", "a^", "a:b", "a\\b", "/a", "a/", "a//b", "a@{1}", "x" * 256],
)  # fmt: skip
async def test_a_hostile_base_branch_is_refused(app_client: AppFactory, branch: str) -> None:
    async with app_client() as client:
        response = await client.post("/api/runs", json={"spec": {**SPEC, "base_branch": branch}})
        assert_error(response, 422, "validation_error")


@pytest.mark.parametrize("name", ["../x", "..", "a/b", "X" * 200, "a b", "-rf", "1ABC"])
async def test_hostile_secret_names_are_refused(app_client: AppFactory, name: str) -> None:
    async with app_client() as client:
        path = "/api/secrets/" + httpx.URL(name).raw_path.decode().replace("/", "%2F")
        refused(await client.put(path, json={"value": "v"}))
        listed = (await client.get("/api/secrets")).json()["names"]
        assert name not in listed


@pytest.mark.parametrize("key", ["..", "../../etc/passwd", "..%2F..%2Fetc", "a" * 300])
async def test_ids_and_config_names_in_paths_never_reach_the_filesystem(
    app_client: AppFactory, key: str
) -> None:
    async with app_client() as client:
        for path in (f"/api/configs/{key}", f"/api/runs/{key}", f"/api/runs/{key}/diff"):
            response = await client.get(path)
            assert response.status_code in (404, 422), response.text
            refused(response)
        refused(await client.post("/api/configs", json={"name": key, "repo": "/r"}))


@pytest.mark.parametrize("repo", ["../x", "a/b/c", "o/..", "./r", "o/r;x", "-o/r", ""])
async def test_hostile_forge_repos_are_refused(app_client: AppFactory, repo: str) -> None:
    async with app_client() as client:
        response = await client.post(
            "/api/forges",
            json={
                "name": "f",
                "kind": "github",
                "base_url": "http://127.0.0.1:9",
                "token": "t",
                "repos": [repo],
            },
        )
        assert_error(response, 422, "validation_error")


async def test_a_body_over_the_limit_is_413_in_the_error_shape(app_client: AppFactory) -> None:
    async with app_client() as client:
        big = {"name": "x", "repo": "/r", "prompt": "a" * (MAX_BODY + 1)}
        assert_error(await client.post("/api/configs", json=big), 413, "payload_too_large")

        async def chunks() -> Any:
            for _ in range(MAX_BODY // 65536 + 2):
                yield b"a" * 65536

        streamed = await client.put(
            "/api/secrets/BIG", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_error(streamed, 413, "payload_too_large")


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"\xff\xfe",
     b'{"name": "x", "repo": "/r", "max_turns": 1' + b"0" * 5000 + b"}", b"{" * 10],
)  # fmt: skip
async def test_malformed_and_bomb_bodies_are_4xx(app_client: AppFactory, body: bytes) -> None:
    async with app_client() as client:
        for path in ("/api/configs", "/api/runs", "/api/orchestration/dispatch"):
            response = await client.post(
                path, content=body, headers={"Content-Type": "application/json"}
            )
            refused(response)


async def test_405_lists_every_method_of_the_path(app_client: AppFactory) -> None:
    async with app_client() as client:
        response = await client.patch("/api/configs/x")
        error = assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "DELETE, GET, PUT"
        assert "DELETE, GET, PUT" in error["message"]
        assert (await client.delete("/api/runs")).headers["allow"] == "GET, POST"


@pytest.mark.parametrize(
    "body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000]
)
async def test_a_signed_nesting_bomb_is_an_unreadable_delivery(world: World, body: bytes) -> None:
    pipe = await world.pipeline()
    headers = {
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": "d-bomb",
        "X-Hub-Signature-256": webhooks.sign("github", SECRET, body),
    }
    with pytest.raises(webhooks.InvalidDeliveryError, match="nested too deeply"):
        await pipe.handle_delivery("home", headers, body)
    assert await world.attempts() == []


def _source(path: Path) -> Path:
    """A real repository with one commit on `main`."""
    path.mkdir()
    run = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*run[:3], "init", "-q", "-b", "main"], check=True)
    (path / "f").write_text("x\n")
    subprocess.run([*run, "add", "f"], check=True)
    subprocess.run([*run, "commit", "-qm", "c"], check=True)
    return path


@pytest.mark.parametrize(
    ("repo", "branch"),
    [
        ("--upload-pack=touch {marker}", None),
        ("ext::sh -c touch% {marker}", None),
        ("{source}", "--upload-pack=touch {marker}"),
        ("{source}", "-c core.sshCommand=touch {marker}"),
    ],
)
async def test_git_never_reads_a_hostile_repo_or_branch_as_an_option(
    tmp_path: Path, repo: str, branch: str | None
) -> None:
    """Past the API's validation too: the clone puts them after `--` or as a value."""
    marker = tmp_path / "pwned"
    source = _source(tmp_path / "source")
    fill = {"marker": marker, "source": source}
    with pytest.raises(local_git.GitError):
        await local_git.clone(
            repo.format(**fill), tmp_path / "dest", branch.format(**fill) if branch else None
        )
    assert not marker.exists()


def test_configs_and_runs_stored_before_the_branch_rule_still_load() -> None:
    now = mapping.dump_time(models.utcnow())
    spec = json.dumps({"repo": "/r", "base_branch": "refs/heads/main"})
    config = mapping.row_to_config(("0123456789ab", "old", spec, now, now))
    assert config.base_branch == "refs/heads/main"
    with pytest.raises(pydantic.ValidationError, match="not a valid branch name"):
        models.ConfigIn(name="new", repo="/r", base_branch="refs/heads/main")
