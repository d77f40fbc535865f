"""Where the local backend finds an agent's binary: the setting, the pinned copy, PATH; Codex's
npm launcher traded for the native binary it runs; a missing CLI named with how to install it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfarm.backends.local import binaries
from agentfarm.domain import errors
from agentfarm.settings import Settings


def executable(path: Path, body: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No pinned tools and an empty PATH."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("AGENTFARM_TOOLS", str(empty))
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(binaries, "CHECKOUT_TOOLS", empty)
    return empty


def test_a_missing_codex_says_make_codex(nowhere: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigurationError, match=r"`make codex`.*AGENTFARM_CODEX_BIN"):
        binaries.find("codex", Settings(data_dir=tmp_path))
    with pytest.raises(errors.ConfigurationError, match=r"`make run`.*AGENTFARM_CLAUDE_BIN"):
        binaries.find("claude", Settings(data_dir=tmp_path))
    bad = Settings(data_dir=tmp_path, codex_bin=str(tmp_path / "nope"))
    with pytest.raises(errors.ConfigurationError, match=r"AGENTFARM_CODEX_BIN=.*not an executable"):
        binaries.find("codex", bad)


def test_the_npm_launcher_is_traded_for_the_native_binary(
    nowhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = tmp_path / "tools"
    modules = tools / "node_modules"
    launcher = executable(modules / "@openai" / "codex" / "bin" / "codex.js")
    native = executable(modules / "@openai" / Path(*binaries.CODEX_NATIVE))
    (modules / ".bin").mkdir()
    (modules / ".bin" / "codex").symlink_to(launcher)
    monkeypatch.setenv("AGENTFARM_TOOLS", str(tools))
    assert binaries.find("codex", Settings(data_dir=tmp_path)) == str(native.resolve())
    configured = Settings(data_dir=tmp_path, codex_bin=str(launcher))
    assert binaries.find("codex", configured) == str(native.resolve())
    # Without the native package the launcher is all there is.
    native.unlink()
    assert binaries.find("codex", Settings(data_dir=tmp_path)) == str(launcher.resolve())
