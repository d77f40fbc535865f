"""The agent image's entrypoint when the remote refuses the run's git token: the clone fails,
or (a token revoked meanwhile) the push does, with one sentence that says so and what to do,
as the local backend does, and never the token."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfarm.domain import models
from tests.fakes import git_http
from tests.unit.test_k8s_entrypoint import TOKEN, bare_with_main, entrypoint, parse, pod_env

ADVICE = "the server refused the run's git token"
STORE = "store a valid one with `agentfarm secret set`"


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[git_http.GitHttpServer]:
    (tmp_path / "remote").mkdir()
    bare_with_main(tmp_path / "remote" / "repo.git")
    server = git_http.GitHttpServer(tmp_path / "remote", token=TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


def env_for(remote: git_http.GitHttpServer, token: str, tmp_path: Path) -> dict[str, str]:
    spec = models.AgentSpec(repo=remote.url("repo.git"), base_branch="main", backend="kubernetes")
    return pod_env(models.Run(spec=spec), {f"GIT_TOKEN_127_0_0_1_{remote.port}": token}, tmp_path)


def forms(token: str) -> tuple[str, str]:
    return token, base64.b64encode(f"oauth2:{token}".encode()).decode()


def test_a_refused_token_fails_the_clone_saying_so(
    remote: git_http.GitHttpServer, tmp_path: Path
) -> None:
    stale = "stale-token-0123456789abcdef"
    done = entrypoint(env_for(remote, stale, tmp_path), "clone")
    assert done.returncode == 1
    message = done.stderr.decode()
    assert message.startswith(f"git clone: {ADVICE}") and STORE in message, message
    assert "could not read Username" in message  # git's own words follow
    assert message.count("\n") == 1  # one line: the pod's termination message
    for value in forms(stale):
        assert value not in done.stdout.decode() + message
    assert remote.passwords() == {stale}


def test_a_refused_token_fails_the_clone_in_the_agent_container_saying_so(
    remote: git_http.GitHttpServer, tmp_path: Path
) -> None:
    """The pod's agent container clones first (AGENTFARM_CLONE=1): a refused token ends it
    with exit code 1 and the notice the control plane makes the run's error; no agent runs,
    nothing is pushed, and the token is in none of it."""
    stale = "stale-token-0123456789abcdef"
    marker = tmp_path / "agent-ran"
    agent = tmp_path / "agent.sh"
    agent.write_text(f"#!/bin/sh\ntouch {marker}\n")
    agent.chmod(0o755)
    done = entrypoint(env_for(remote, stale, tmp_path), "run", "--", str(agent))
    assert done.returncode == 1
    lines = parse(done.stdout)
    assert lines[0] == ("N", f"cloning {remote.url('repo.git')}")
    kind, text = lines[-1]
    assert kind == "N" and text.startswith("agentfarm.clone-failed "), lines
    error = json.loads(text.removeprefix("agentfarm.clone-failed "))["error"]
    assert error.startswith(f"git clone: {ADVICE}") and STORE in error, error
    assert len(lines) == 2 and not marker.exists()
    for value in forms(stale):
        assert value not in done.stdout.decode() + done.stderr.decode()


def test_a_token_revoked_before_the_push_fails_the_push_saying_so(
    remote: git_http.GitHttpServer, tmp_path: Path
) -> None:
    env = env_for(remote, TOKEN, tmp_path)
    del env["AGENTFARM_CLONE"]  # cloned here, before the token is revoked, not by ``run``
    assert entrypoint(env, "clone").returncode == 0
    agent = tmp_path / "agent.sh"
    agent.write_text("#!/bin/sh\necho x > f.txt; git add f.txt; git commit -qm 'add f'\n")
    agent.chmod(0o755)
    remote.token = "rotated-token-9876543210fedcba"
    done = entrypoint(env, "run", "--", str(agent))
    notices = [text for kind, text in parse(done.stdout) if kind == "N"]
    (record,) = [n for n in notices if n.startswith("agentfarm.branch ")]
    outcome = json.loads(record.removeprefix("agentfarm.branch "))
    assert outcome["pushed"] is False and outcome["commits"] == 1, outcome
    assert outcome["error"].startswith(f"git push: {ADVICE}") and STORE in outcome["error"]
    for value in forms(TOKEN):
        assert value not in done.stdout.decode() + done.stderr.decode()
