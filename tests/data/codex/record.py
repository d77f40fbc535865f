"""Re-record the ``codex exec --json`` samples in this directory.

Runs the real CLI (``$AGENTFARM_TOOLS/node_modules/.bin/codex``) on the host, not sandboxed,
against the scripted fake Responses API in a throwaway git repository, with the provider given by
``-c`` flags and no config file, and keeps its stdout lines verbatim, one file per case, plus
``<case>.meta.json`` (exit code, stderr lines). Run from the repository root:

    .venv/bin/python -m tests.data.codex.record
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tests.fakes import openai_api as fake

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MODEL = "gpt-5-codex"


def codex() -> str:
    tools = Path(os.environ.get("AGENTFARM_TOOLS", ROOT / ".tools"))
    return str(tools / "node_modules" / ".bin" / "codex")


def flags(base_url: str) -> list[str]:
    provider = "model_providers.agentfarm"
    settings = [
        "check_for_update_on_startup=false",
        "analytics.enabled=false",
        'model_provider="agentfarm"',
        f'{provider}.name="agentfarm"',
        f'{provider}.base_url="{base_url}"',
        f'{provider}.env_key="CODEX_API_KEY"',
        f'{provider}.wire_api="responses"',
        f"{provider}.request_max_retries=0",
        f"{provider}.stream_max_retries=0",
    ]
    return [arg for setting in settings for arg in ("-c", setting)]


def run(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CODEX_HOME": str(home / ".codex"),
        "CODEX_API_KEY": "sk-fake",
        **{f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
           for what, value in (("NAME", "agentfarm"), ("EMAIL", "agentfarm@localhost"))},
    }  # fmt: skip
    return subprocess.run(
        [codex(), "exec", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def save(case: str, proc: subprocess.CompletedProcess[str]) -> None:
    (HERE / f"{case}.jsonl").write_text(proc.stdout)
    meta = {"exit_code": proc.returncode, "stderr": proc.stderr.splitlines()}
    (HERE / f"{case}.meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def main() -> None:
    common = ["--json", "--dangerously-bypass-approvals-and-sandbox", "-m", MODEL]
    with fake.FakeOpenAI() as api, tempfile.TemporaryDirectory() as tmp:
        home, repo = Path(tmp) / "home", Path(tmp) / "repo"
        (home / ".codex").mkdir(parents=True)
        repo.mkdir()
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        base = [*common, *flags(api.base_url)]
        for case in ("write-and-commit", "failing-command", "api-error", "stream-error"):
            save(case, run([*base, f"Please do it. {fake.marker(case)}"], repo, home))
        first = run([*base, f"Say hello. {fake.marker('hello')}"], repo, home)
        thread = json.loads(first.stdout.splitlines()[0])["thread_id"]
        again = f"And once more. {fake.marker('write-and-commit')}"
        # `resume` takes the exec flags again; the thread id comes before the prompt.
        followup = run(["resume", *base, thread, again], repo, home)
        save("followup", followup)


if __name__ == "__main__":
    main()
