"""Host-side git safety: what :func:`git.sanitize` does with a ``.git`` an agent changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentfarm.backends.local import git

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
