"""Host-side git: what :func:`git.sanitize` does with a ``.git`` an agent changed, and the
helpers (clone, new branch, fetch back, push) on real git in temporary directories, each
with hooks and the agent's repository settings switched off."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from agentfarm.backends.local import git
from agentfarm.domain import errors, launch, models
from tests.fakes import git_http

CONFIG = "[core]\n\tbare = false\n"
ALTERNATES = "/srv/source/.git/objects\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace whose .git looks like our clone's (plain files only)."""
    ws = tmp_path / "workspace"
    for name in ("objects/info", "objects/pack", "refs/heads", "info", "hooks"):
        (ws / ".git" / name).mkdir(parents=True)
    (ws / ".git" / "HEAD").write_text("ref: refs/heads/agentfarm/x\n")
    (ws / ".git" / "config").write_text(CONFIG)
    (ws / ".git" / "objects" / "info" / "alternates").write_text(ALTERNATES)
    return ws


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host directory the agent cannot see but can name in a symlink."""
    directory = tmp_path / "host" / "victim"
    (directory / "info").mkdir(parents=True)
    (directory / "config").write_text("precious\n")
    (directory / "alternates").write_text("precious\n")
    return directory


def test_clean_workspace_gets_config_and_alternates_back(workspace: Path) -> None:
    git_dir = workspace / ".git"
    (git_dir / "config").write_text('[core]\n\tfsmonitor = "touch /tmp/pwned"\n')
    (git_dir / "objects" / "info" / "alternates").write_text("/etc\n")
    assert git.sanitize(workspace, CONFIG, ALTERNATES) == []
    assert (git_dir / "config").read_text() == CONFIG
    assert (git_dir / "objects" / "info" / "alternates").read_text() == ALTERNATES
    assert git.sanitize(workspace, CONFIG, None) == []
    assert not (git_dir / "objects" / "info" / "alternates").exists()


def test_symlinked_git_dir_is_refused_and_its_target_untouched(
    workspace: Path, victim: Path
) -> None:
    # Fails before issue 7: the server wrote the saved config into the link's target.
    os.rename(workspace / ".git", workspace / ".git-moved")
    (workspace / ".git").symlink_to(victim)
    with pytest.raises(git.GitError, match=r"replaced \.git with a symlink"):
        git.sanitize(workspace, CONFIG, ALTERNATES)
    assert (victim / "config").read_text() == "precious\n"


def test_a_symlink_deeper_in_git_is_refused(workspace: Path, victim: Path) -> None:
    # Fails before issue 7: objects/info as a link made the server rewrite a host file.
    info = workspace / ".git" / "objects" / "info"
    (info / "alternates").unlink()
    info.rmdir()
    info.symlink_to(victim)
    with pytest.raises(git.GitError, match=r"a symlink at \.git/objects/info"):
        git.sanitize(workspace, CONFIG, ALTERNATES)
    assert (victim / "alternates").read_text() == "precious\n"


def test_git_file_and_special_files_are_refused(workspace: Path, victim: Path) -> None:
    os.mkfifo(workspace / ".git" / "packed-refs")  # host git would block reading it
    with pytest.raises(git.GitError, match=r"a special file at \.git/packed-refs"):
        git.sanitize(workspace, CONFIG, ALTERNATES)
    os.rename(workspace / ".git", workspace / ".git-moved")
    (workspace / ".git").write_text(f"gitdir: {victim}\n")
    with pytest.raises(git.GitError, match=r"replaced \.git with a file"):
        git.sanitize(workspace, CONFIG, ALTERNATES)
    (workspace / ".git").unlink()
    with pytest.raises(git.GitError, match=r"removed \.git"):
        git.sanitize(workspace, CONFIG, ALTERNATES)
    assert (victim / "config").read_text() == "precious\n"


def test_commondir_and_grafts_are_removed_with_a_notice(workspace: Path, victim: Path) -> None:
    git_dir = workspace / ".git"
    (git_dir / "commondir").write_text(f"{victim}\n")
    (git_dir / "info" / "grafts").write_text("0" * 40 + "\n")
    (git_dir / "objects" / "info" / "http-alternates").write_text("http://127.0.0.1:1/\n")
    notices = git.sanitize(workspace, CONFIG, ALTERNATES)
    assert notices == [
        "ignored .git/commondir, which the agent wrote: git does not use it",
        "ignored .git/info/grafts, which the agent wrote: git does not use it",
        "ignored .git/objects/info/http-alternates, which the agent wrote: git does not use it",
    ]
    assert not (git_dir / "commondir").exists()
    assert not (git_dir / "info" / "grafts").exists()
    assert (victim / "config").read_text() == "precious\n"


def test_a_file_where_git_keeps_a_directory_is_a_clear_refusal(workspace: Path) -> None:
    (workspace / ".git" / "commondir").mkdir()
    with pytest.raises(git.GitError, match=r"a state git never does \(.*: commondir\)"):
        git.sanitize(workspace, CONFIG, ALTERNATES)
    (workspace / ".git" / "commondir").rmdir()
    info = workspace / ".git" / "objects" / "info"
    (info / "alternates").unlink()
    info.rmdir()
    info.write_text("not a directory\n")
    with pytest.raises(git.GitError, match=r"a state git never does \(.*: info\)"):
        git.sanitize(workspace, CONFIG, ALTERNATES)


# --- the helpers on real git ------------------------------------------------------------------

IDENTITY = {
    "GIT_AUTHOR_NAME": "Agent",
    "GIT_AUTHOR_EMAIL": "agent@example.com",
    "GIT_COMMITTER_NAME": "Agent",
    "GIT_COMMITTER_EMAIL": "agent@example.com",
}


def setup_git(*args: str, cwd: Path | None = None) -> str:
    """Plain git for building fixtures (not the code under test)."""
    env = {**os.environ, **IDENTITY, "GIT_CONFIG_GLOBAL": "/dev/null"}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture(autouse=True)
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The helpers pass the server's environment on: give it an identity and no user config."""
    for name, value in IDENTITY.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A user's repository with ``main`` and ``release/1.2``."""
    repo = tmp_path / "source"
    setup_git("init", "-q", "-b", "main", str(repo))
    (repo / "README.md").write_text("main\n")
    setup_git("add", ".", cwd=repo)
    setup_git("commit", "-q", "-m", "init", cwd=repo)
    setup_git("branch", "release/1.2", cwd=repo)
    setup_git("checkout", "-q", "release/1.2", cwd=repo)
    (repo / "README.md").write_text("release\n")
    setup_git("commit", "-q", "-am", "release", cwd=repo)
    setup_git("checkout", "-q", "main", cwd=repo)
    return repo


def plant_hooks(repo: Path, proof: Path) -> None:
    """The agent's config: hooks and an fsmonitor that would leave ``proof`` if git ran them."""
    hooks = repo / ".git" / "planted-hooks"
    hooks.mkdir()
    for name in ("post-checkout", "pre-commit", "post-commit", "reference-transaction"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\necho {name} >> {proof}\n")
        hook.chmod(0o755)
    setup_git("config", "core.hooksPath", str(hooks), cwd=repo)
    setup_git("config", "core.fsmonitor", f"echo fsmonitor >> {proof}; false", cwd=repo)


def test_config_args_switch_off_the_repository_settings_and_trust_only_given_paths() -> None:
    assert git._config_args(()) == [
        "-c", "core.hooksPath=/dev/null",
        "-c", "core.fsmonitor=false",
        "-c", "core.alternateRefsCommand=",
        "-c", "core.sshCommand=ssh",
        "-c", "protocol.ext.allow=never",
    ]  # fmt: skip
    trusted = (Path("/runs/r1/workspace"), Path("/runs/r1/workspace/.git"))
    assert git._config_args(trusted)[len(git.SAFE_CONFIG) * 2 :] == [
        "-c", "safe.directory=/runs/r1/workspace",
        "-c", "safe.directory=/runs/r1/workspace/.git",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("repo", "local"),
    [
        ("/srv/repo", True),
        ("relative/repo", True),
        ("~/repo", True),
        ("file:///srv/repo", True),
        ("https://github.com/o/r.git", False),
        ("ssh://git@host/o/r.git", False),
        ("git@github.com:o/r.git", False),
        ("http://127.0.0.1:8080/r.git", False),
    ],
)
def test_is_local(repo: str, local: bool) -> None:
    assert git.is_local(repo) is local


def test_local_path_resolves_file_urls_and_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert git.local_path("file:///srv/x/../repo") == Path("/srv/repo")
    assert git.local_path("~/repo") == Path("/home/someone/repo")


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        ("https://user:tok@host/x.git", "https://host/x.git"),
        ("https://tok@host/x.git", "https://host/x.git"),
        ("ssh://git@host/x.git", "ssh://host/x.git"),
        ("https://host/x.git", "https://host/x.git"),
        ("https://host/path@v1.git", "https://host/path@v1.git"),  # an @ after the host stays
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),  # scp-like: no credentials
        ("/srv/repo", "/srv/repo"),
    ],
)
def test_strip_credentials(url: str, stripped: str) -> None:
    assert git.strip_credentials(url) == stripped


@pytest.mark.parametrize(
    "branch",
    [
        "-b",
        "--upload-pack=touch x",
        "a..b",
        "has space",
        "a~1",
        "a^",
        "a:b",
        "a?",
        "a*",
        "a[",
        "a\\b",
    ],
)
def test_base_branch_names_git_would_misread_are_refused_before_any_git(branch: str) -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        models.AgentSpec(repo="/srv/repo", base_branch=branch)
    assert [e["loc"] for e in raised.value.errors()] == [("base_branch",)]


@pytest.mark.parametrize("branch", ["main", "release/1.2", "feature_x-y.z", "v2"])
def test_base_branch_names_accepted_are_names_git_accepts(branch: str) -> None:
    assert models.AgentSpec(repo="/srv/repo", base_branch=branch).base_branch == branch
    assert setup_git("check-ref-format", "--branch", branch) == branch


def test_an_empty_base_branch_means_the_default_one() -> None:
    assert models.AgentSpec(repo="/srv/repo", base_branch="").base_branch is None


async def test_clone_of_a_local_source_shares_its_objects_and_takes_the_base_branch(
    source: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "ws"
    await git.clone(str(source), dest, "release/1.2")
    assert (dest / "README.md").read_text() == "release\n"
    assert git.alternates(dest) == [source / ".git" / "objects"]
    default = tmp_path / "ws-default"
    await git.clone(f"file://{source}", default, None)
    assert (default / "README.md").read_text() == "main\n"


async def test_clone_of_a_missing_branch_fails_with_gits_words(
    source: Path, tmp_path: Path
) -> None:
    with pytest.raises(git.GitError) as raised:
        await git.clone(str(source), tmp_path / "ws", "no-such-branch")
    assert isinstance(raised.value, errors.LaunchError)  # a launch that fails, said so
    assert str(raised.value).startswith("git clone failed: ")
    assert "no-such-branch" in str(raised.value)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[git_http.GitHttpServer]:
    """A remote over HTTP that wants a token, serving ``repo.git`` with ``main``."""
    root = tmp_path / "forge"
    root.mkdir()
    seed = tmp_path / "seed"
    setup_git("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("remote\n")
    setup_git("add", ".", cwd=seed)
    setup_git("commit", "-q", "-m", "init", cwd=seed)
    setup_git("clone", "-q", "--bare", str(seed), str(root / "repo.git"))
    server = git_http.GitHttpServer(root, token="forge-token-0123456789").start()
    try:
        yield server
    finally:
        server.stop()


async def test_clone_of_a_url_with_credentials_keeps_none_in_the_workspace(
    remote: git_http.GitHttpServer, tmp_path: Path
) -> None:
    dest = tmp_path / "ws"
    url = remote.url("repo.git")
    with_token = url.replace("http://", "http://agent:forge-token-0123456789@")
    await git.clone(with_token, dest, "main")
    assert (dest / "README.md").read_text() == "remote\n"
    assert "forge-token-0123456789" in remote.passwords()
    assert setup_git("remote", "get-url", "origin", cwd=dest) == url
    assert "forge-token-0123456789" not in (dest / ".git" / "config").read_text()


async def test_a_failing_url_is_reported_without_its_credentials(
    remote: git_http.GitHttpServer, tmp_path: Path
) -> None:
    wrong = remote.url("repo.git").replace("http://", "http://agent:wrong-token-000000@")
    with pytest.raises(git.GitError) as raised:
        await git.clone(wrong, tmp_path / "ws", None)
    assert "wrong-token-000000" not in str(raised.value)
    assert not (tmp_path / "ws").exists()


async def test_new_branch_checks_out_a_fresh_branch(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ws"
    await git.clone(str(source), dest, None)
    main = setup_git("rev-parse", "HEAD", cwd=dest)
    await git.new_branch(dest, "agentfarm/r1")
    assert setup_git("symbolic-ref", "HEAD", cwd=dest) == "refs/heads/agentfarm/r1"
    assert setup_git("rev-parse", "HEAD", cwd=dest) == main
    with pytest.raises(git.GitError):
        await git.new_branch(dest, "agentfarm/r1")  # exists already


async def test_the_helpers_run_no_hook_or_fsmonitor_the_agent_configured(
    source: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "ws"
    await git.clone(str(source), dest, None)
    proof = tmp_path / "proof"
    plant_hooks(dest, proof)
    await git.new_branch(dest, "agentfarm/r1")
    (dest / "work.txt").write_text("done\n")
    await git.git("add", "work.txt", cwd=dest)
    await git.git("commit", "-q", "-m", "work", cwd=dest)
    await git.git("status", "--porcelain", cwd=dest)
    assert not proof.exists()
    # The check is real: plain git in the same workspace runs them.
    setup_git("checkout", "-q", "main", cwd=dest)
    assert "post-checkout" in proof.read_text()


async def test_fetch_back_brings_the_agents_branch_home(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ws"
    await git.clone(str(source), dest, None)
    await git.new_branch(dest, "agentfarm/r1")
    (dest / "work.txt").write_text("done\n")
    setup_git("add", "work.txt", cwd=dest)
    setup_git("commit", "-q", "-m", "work", cwd=dest)
    head = setup_git("rev-parse", "HEAD", cwd=dest)
    await git.fetch_back(source, dest, "agentfarm/r1")
    assert setup_git("rev-parse", "refs/heads/agentfarm/r1", cwd=source) == head
    assert setup_git("symbolic-ref", "HEAD", cwd=source) == "refs/heads/main"  # untouched
    # A second run of the same branch (the agent rewrote it) replaces it: the refspec forces.
    setup_git("commit", "-q", "--amend", "-m", "rewritten", cwd=dest)
    await git.fetch_back(source, dest, "agentfarm/r1")
    assert setup_git("rev-parse", "refs/heads/agentfarm/r1", cwd=source) == setup_git(
        "rev-parse", "HEAD", cwd=dest
    )


async def test_fetch_back_refuses_a_malformed_object(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ws"
    await git.clone(str(source), dest, None)
    await git.new_branch(dest, "agentfarm/r1")
    # A submodule name that climbs out of .git/modules: git's fsck calls it an error.
    (dest / ".gitmodules").write_text(
        '[submodule "../../../hooks"]\n\tpath = sub\n\turl = https://example.com/x.git\n'
    )
    setup_git("add", ".gitmodules", cwd=dest)
    setup_git("commit", "-q", "-m", "hostile", cwd=dest)
    with pytest.raises(git.GitError) as raised:
        await git.fetch_back(source, dest, "agentfarm/r1")
    # git's own fsck message id for the problem, under the command that failed.
    assert str(raised.value).startswith("git fetch failed: ")
    assert "gitmodulesName" in str(raised.value)
    with pytest.raises(subprocess.CalledProcessError):
        setup_git("rev-parse", "--verify", "-q", "refs/heads/agentfarm/r1", cwd=source)


async def test_push_sends_the_branch_to_the_remote(source: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    setup_git("clone", "-q", "--bare", str(source), str(bare))
    dest = tmp_path / "ws"
    await git.clone(str(source), dest, None)
    await git.new_branch(dest, "agentfarm/r1")
    (dest / "work.txt").write_text("done\n")
    setup_git("add", "work.txt", cwd=dest)
    setup_git("commit", "-q", "-m", "work", cwd=dest)
    await git.push(str(bare), dest, "agentfarm/r1")
    assert setup_git("rev-parse", "refs/heads/agentfarm/r1", cwd=bare) == setup_git(
        "rev-parse", "HEAD", cwd=dest
    )


async def test_git_errors_carry_gits_words(source: Path) -> None:
    with pytest.raises(git.GitError) as raised:
        await git.git("rev-parse", "--verify", "no-such-ref", cwd=source)
    assert str(raised.value).startswith("git rev-parse failed: fatal: ")


async def test_a_git_that_hangs_is_cut_off_at_its_limit(
    source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An editor that waits for as long as git lives (with git's output pipes closed, so
    # nothing outlives git holding them): git waits for ever, so only the limit ends it,
    # however fast or slow the machine.
    monkeypatch.setenv(
        "GIT_EDITOR",
        "exec >/dev/null 2>&1 </dev/null; while kill -0 $PPID 2>/dev/null; do sleep 0.05; done; :",
    )
    with pytest.raises(git.GitError) as slow:
        await git.git("commit", "--allow-empty", cwd=source, limit=0.2)
    assert str(slow.value) == "git commit took longer than 0.2 s"


async def test_the_limit_also_ends_what_git_started(
    source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An editor that keeps git's output pipes open and outlives git unless it is killed too
    # (as git-remote-http can on a silent remote): the call still ends at the limit. The
    # outer bound only turns a hang into a failure; it is not a measure of speed.
    monkeypatch.setenv("GIT_EDITOR", "sleep 600; :")
    with pytest.raises(git.GitError) as slow:
        async with asyncio.timeout(60):
            await git.git("commit", "--allow-empty", cwd=source, limit=0.2)
    assert str(slow.value) == "git commit took longer than 0.2 s"


def test_alternates_follow_chains_and_skip_comments(tmp_path: Path) -> None:
    ws, middle, last = tmp_path / "ws", tmp_path / "middle", tmp_path / "last"
    for repo in (ws / ".git", middle, last):
        (repo / "objects" / "info").mkdir(parents=True)
    (ws / ".git" / "objects" / "info" / "alternates").write_text(
        f"# borrowed\n\n{middle / 'objects'}\n"
    )
    # Relative to the objects directory, as git reads it.
    (middle / "objects" / "info" / "alternates").write_text("../../last/objects\n")
    (last / "objects" / "info" / "alternates").write_text(f"{middle / 'objects'}\n")  # a loop
    assert git.alternates(ws) == [middle / "objects", last / "objects"]
    assert git.alternates(tmp_path / "none") == []


def remote_auth(remote: git_http.GitHttpServer, token: str) -> launch.GitAuth:
    prefix = f"http://127.0.0.1:{remote.port}/"
    return launch.GitAuth(prefix, "oauth2", token, "GIT_TOKEN_127_0_0_1")


async def test_a_token_reaches_git_through_its_environment_only(
    remote: git_http.GitHttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "forge-token-0123456789"
    auth = remote_auth(remote, token)
    started: list[tuple[tuple[str, ...], dict[str, str]]] = []
    real_exec = asyncio.create_subprocess_exec

    async def recording(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        started.append((argv, dict(kwargs["env"])))
        return await real_exec(*argv, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # the server's own: never passed on
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "http.extraHeader")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "X-Leak: server")
    dest = tmp_path / "ws"
    await git.clone(remote.url("repo.git"), dest, "main", auth)

    assert (dest / "README.md").read_text() == "remote\n"
    assert remote.passwords() == {token}  # every request carried it
    [(argv, env)] = started
    assert not any(token in arg or auth.basic in arg for arg in argv)
    assert {k: v for k, v in env.items() if k.startswith("GIT_CONFIG_")} == {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.http://127.0.0.1:{remote.port}/.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {auth.basic}",
    }
    written = "".join(p.read_text(errors="replace") for p in (dest / ".git").glob("config*"))
    assert token not in written and auth.basic not in written
    assert setup_git("remote", "get-url", "origin", cwd=dest) == remote.url("repo.git")


async def test_a_refused_token_is_masked_in_gits_words(
    remote: git_http.GitHttpServer, tmp_path: Path
) -> None:
    auth = remote_auth(remote, "wrong-token-0000000000")
    with pytest.raises(git.GitError) as raised:
        await git.clone(remote.url("repo.git"), tmp_path / "ws", None, auth)
    message = str(raised.value)
    assert message.startswith(f"git clone failed: {git.AUTH_REFUSED} (git: ")
    assert auth.token not in message and auth.basic not in message


async def test_push_with_a_token_sends_the_branch_fast_forward_only(
    remote: git_http.GitHttpServer, tmp_path: Path
) -> None:
    auth = remote_auth(remote, "forge-token-0123456789")
    dest = tmp_path / "ws"
    await git.clone(remote.url("repo.git"), dest, None, auth)
    await git.new_branch(dest, "agentfarm/issue-1-x")
    start = await git.head(dest)
    (dest / "work.txt").write_text("done\n")
    setup_git("add", "work.txt", cwd=dest)
    setup_git("commit", "-q", "-m", "work", cwd=dest)
    head = await git.head(dest, "refs/heads/agentfarm/issue-1-x")
    assert await git.count(dest, start, head) == 1
    await git.push(remote.url("repo.git"), dest, "agentfarm/issue-1-x", auth)
    bare = remote.root / "repo.git"
    assert setup_git("rev-parse", "refs/heads/agentfarm/issue-1-x", cwd=bare) == head
    # Rewritten history does not replace what the remote has.
    setup_git("commit", "-q", "--amend", "-m", "rewritten", cwd=dest)
    with pytest.raises(git.GitError) as raised:
        await git.push(remote.url("repo.git"), dest, "agentfarm/issue-1-x", auth)
    assert "rejected" in str(raised.value)
    assert setup_git("rev-parse", "refs/heads/agentfarm/issue-1-x", cwd=bare) == head
