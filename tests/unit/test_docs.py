"""The docs that are generated from code stay in sync with it."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.gen_config_docs import DOC, render

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is out of date: run `.venv/bin/python scripts/gen_config_docs.py`"
    )


def test_readme_has_exactly_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up.*?```sh\n(.*?)```", readme, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
