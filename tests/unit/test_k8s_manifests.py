"""The run's pod and Secret, built without a cluster."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from agentfarm.agents import command as command_agent
from agentfarm.backends.kubernetes import config, manifests
from agentfarm.domain import backend_config, errors, models
from agentfarm.domain.launch import AgentCommand, LaunchSpec
from agentfarm.settings import Settings
from agentfarm.supervisor import credentials

SECRETS = {"CLAUDE_CODE_OAUTH_TOKEN": "sk-oauth-secret", "GITHUB_TOKEN": "ghp_secret"}


def make(**k8s: object) -> tuple[models.Run, AgentCommand, config.PodConfig]:
    spec = models.AgentSpec(
        repo="https://github.com/o/r.git", prompt="do it", backend="kubernetes", kubernetes=k8s
    )
    run = models.Run(id="abc123def456", spec=spec, config_name="demo")
    command = AgentCommand(
        argv=["/home/me/.tools/node_modules/.bin/claude", "-p", "--output-format", "stream-json"],
        env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
        stdin=b'{"type":"user"}\n',
        close_stdin_after=("result",),
    )
    settings = Settings(k8s_image="agent:1", k8s_forgejo_url="https://code.example.org/")
    return run, command, config.resolve(spec, settings)


def env_of(container: dict[str, object]) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}  # type: ignore[attr-defined]


def test_no_secret_value_in_pod_spec() -> None:
    run, command, cfg = make()
    pod = json.dumps(manifests.build_pod(run, LaunchSpec.of(run.id, command, SECRETS), cfg))
    for value in SECRETS.values():
        assert value not in pod
    assert "do it" not in pod
    assert '{"type":"user"}' not in pod


def test_secret_holds_credentials_and_stdin() -> None:
    run, command, cfg = make()
    secret = manifests.build_secret(run, LaunchSpec.of(run.id, command, SECRETS), cfg)
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert data[manifests.STDIN_KEY] == command.stdin
    assert data["GITHUB_TOKEN"] == b"ghp_secret"
    assert secret["metadata"]["labels"][manifests.LABEL_RUN] == run.id


def test_pod_is_hardened() -> None:
    run, command, cfg = make()
    spec = manifests.build_pod(run, LaunchSpec.of(run.id, command, SECRETS), cfg)["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/workspace", "/home/agent", "/tmp"} <= mounts


def test_git_token_goes_to_git_not_to_the_agent_env() -> None:
    run, command, cfg = make()
    pod = manifests.build_pod(
        run, LaunchSpec.of(run.id, command, SECRETS | {"FORGEJO_TOKEN": "fj"}), cfg
    )
    agent = pod["spec"]["containers"][0]
    env = env_of(agent)
    rules = json.loads(env["AGENTFARM_GIT_CREDENTIALS"])  # type: ignore[arg-type]
    assert rules == [
        {"url": "https://github.com/", "user": "x-access-token", "env": "GITHUB_TOKEN"}
    ]
    assert env["CLAUDE_CODE_OAUTH_TOKEN"] == {
        "secretKeyRef": {"name": "agentfarm-run-abc123def456", "key": "CLAUDE_CODE_OAUTH_TOKEN"}
    }
    assert "FORGEJO_TOKEN" not in env  # another host's token
    assert agent["command"][:5] == ["python3", manifests.ENTRYPOINT, "run", "--", "claude"]
    assert json.loads(env["AGENTFARM_CLOSE_STDIN_AFTER"]) == ["result"]  # type: ignore[arg-type]
    # One container: the entrypoint clones before the agent (the token only in git's env).
    assert "initContainers" not in pod["spec"] and len(pod["spec"]["containers"]) == 1
    assert env["AGENTFARM_CLONE"] == "1"
    assert env["GITHUB_TOKEN"] == {
        "secretKeyRef": {"name": "agentfarm-run-abc123def456", "key": "GITHUB_TOKEN"}
    }


@pytest.mark.parametrize(
    ("repo", "token"),
    [
        ("https://github.com/o/r.git", "GITHUB_TOKEN"),
        ("https://code.example.org/o/r.git", "FORGEJO_TOKEN"),
        ("https://git.example.net/o/r.git", "GIT_TOKEN_GIT_EXAMPLE_NET"),
        ("http://git.lan:3000/o/r.git", "GIT_TOKEN_GIT_LAN_3000"),
        ("http://github.com/o/r.git", None),  # forge tokens never go over plain http
        ("git://github.com/o/r.git", None),
        ("https://elsewhere.example/o/r.git", None),
    ],
)
def test_the_runs_secret_holds_only_the_token_for_its_repository(
    repo: str, token: str | None
) -> None:
    """Item 6: git tokens travel in the run's Secret, one, for the run's own host."""
    spec = models.AgentSpec(repo=repo, prompt="p", backend="kubernetes")
    run = models.Run(id="abc123def456", spec=spec)
    _, command, _ = make()
    cfg = config.resolve(
        spec, Settings(k8s_image="a:1", k8s_forgejo_url="https://code.example.org")
    )
    tokens = {
        "GITHUB_TOKEN": "ghp_1",
        "FORGEJO_TOKEN": "fj_2",
        "GIT_TOKEN_GIT_EXAMPLE_NET": "tok_3",
        "GIT_TOKEN_GIT_LAN_3000": "tok_4",
        "GIT_TOKEN_GIT_LAN": "tok_5",
    }
    secrets = {"ANTHROPIC_API_KEY": "sk-ant-1", **tokens}
    data = manifests.build_secret(run, LaunchSpec.of(run.id, command, secrets), cfg)["data"]
    held = {k for k in data if k in tokens}
    assert held == ({token} if token else set())
    assert "ANTHROPIC_API_KEY" in data
    pod = json.dumps(manifests.build_pod(run, LaunchSpec.of(run.id, command, secrets), cfg))
    for value in secrets.values():
        assert value not in pod


@pytest.mark.parametrize(
    ("repo", "name", "user"),
    [
        ("https://github.com/o/r.git", "GITHUB_TOKEN", "x-access-token"),
        ("https://github.example.com/o/r.git", "GIT_TOKEN_GITHUB_EXAMPLE_COM", "x-access-token"),
        ("https://code.example.org/o/r.git", "GIT_TOKEN_CODE_EXAMPLE_ORG", "oauth2"),
        ("http://127.0.0.1:3000/o/r.git", "GIT_TOKEN_127_0_0_1_3000", "oauth2"),
    ],
)
def test_a_token_the_spec_names_reaches_the_pod_under_its_hosts_name(
    repo: str, name: str, user: str
) -> None:
    """``git_token_secret``: that token alone, under the name the entrypoint expects for the
    repository's host, with the right user; the run's named branch goes with it."""
    spec = models.AgentSpec(
        repo=repo, prompt="p", backend="kubernetes", git_token_secret="FORGE_BOT"
    )
    run = models.Run(id="abc123def456", spec=spec, branch="agentfarm/issue-4-fix")
    _, command, _ = make()
    cfg = config.resolve(spec, Settings(k8s_image="a:1"))
    auth = credentials.explicit_git_auth(Settings(), {"FORGE_BOT": "tok_named"}, repo, "FORGE_BOT")
    launching = dataclasses.replace(
        LaunchSpec.of(run.id, command, {"ANTHROPIC_API_KEY": "sk-ant-1"}),
        branch="agentfarm/issue-4-fix",
        git_auth=auth,
    )
    data = manifests.build_secret(run, launching, cfg)["data"]
    assert base64.b64decode(data[name]) == b"tok_named"
    assert "FORGE_BOT" not in data
    pod = manifests.build_pod(run, launching, cfg)
    assert "tok_named" not in json.dumps(pod)
    for container in pod["spec"]["containers"]:
        env = env_of(container)
        rules = json.loads(env["AGENTFARM_GIT_CREDENTIALS"])  # type: ignore[arg-type]
        assert rules == [{"url": auth.prefix, "user": user, "env": name}]
        assert env[name] == {"secretKeyRef": {"name": "agentfarm-run-abc123def456", "key": name}}
        assert env["AGENTFARM_BRANCH"] == "agentfarm/issue-4-fix"


def test_scheduling_and_runtime_settings() -> None:
    run, command, cfg = make(
        runtime_class="kata-fc",
        node_selector={"agentfarm.dev/pool": "agents"},
        tolerations=[{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="agent",
        resources={"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"memory": "1Gi"}},
    )
    spec = manifests.build_pod(run, LaunchSpec.of(run.id, command, {}), cfg)["spec"]
    assert spec["runtimeClassName"] == "kata-fc"
    assert spec["nodeSelector"] == {"agentfarm.dev/pool": "agents"}
    assert spec["tolerations"] == [{"operator": "Exists", "key": "agents", "effect": "NoSchedule"}]
    assert spec["serviceAccountName"] == "agent"
    assert spec["containers"][0]["resources"] == {
        "requests": {"memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }


def test_shared_home_is_mounted_read_only_beside_the_pods_own_home() -> None:
    """Item 2b: no run can write the shared ~/.claude (hooks in settings.json would run in
    every later run); the entrypoint copies only its credentials file into the pod's HOME."""
    run, command, cfg = make(credentials="shared-home")
    pod = manifests.build_pod(run, LaunchSpec.of(run.id, command, SECRETS), cfg)
    agent = pod["spec"]["containers"][0]
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in env_of(agent)
    assert env_of(agent)["AGENTFARM_SHARED_CLAUDE"] == manifests.SHARED_CLAUDE
    shared = [m for m in agent["volumeMounts"] if m["name"] == "claude-home"]
    assert shared == [
        {"name": "claude-home", "mountPath": manifests.SHARED_CLAUDE, "readOnly": True}
    ]
    assert not manifests.SHARED_CLAUDE.startswith(manifests.HOME)
    claims = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [
        {
            "name": "claude-home",
            "persistentVolumeClaim": {"claimName": "claude-home", "readOnly": True},
        }
    ]


def test_missing_image_and_bad_run_id_are_clear() -> None:
    spec = models.AgentSpec(repo="https://x/y", backend="kubernetes")
    with pytest.raises(errors.ConfigurationError, match="AGENTFARM_K8S_IMAGE"):
        config.resolve(spec, Settings())
    with pytest.raises(errors.LaunchError, match="cannot name"):
        manifests.object_name("Bad_ID")


def test_kubernetes_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="resources"):
        backend_config.KubernetesSpec.model_validate({"resources": {"limits": {"memory": "lots"}}})
    with pytest.raises(ValueError, match="extra"):
        backend_config.KubernetesSpec.model_validate({"privileged": True})


def test_a_command_agent_pod_runs_its_program_and_closes_stdin_once_written() -> None:
    spec = models.AgentSpec(
        repo="https://github.com/o/r.git",
        prompt="do it",
        agent="command",
        command={"argv": ["aider", "--yes"]},
        backend="kubernetes",
    )
    run = models.Run(id="abc123def456", spec=spec)
    built = command_agent.CommandAdapter().build_command(spec)
    cfg = config.resolve(spec, Settings(k8s_image="agent:1"))
    launched = LaunchSpec.of(run.id, built, {})
    agent = manifests.build_pod(run, launched, cfg)["spec"]["containers"][0]
    assert agent["command"][3:] == ["--", "aider", "--yes"]
    # No stdout line to wait for: the entrypoint closes stdin once it has written the prompt.
    assert json.loads(env_of(agent)["AGENTFARM_CLOSE_STDIN_AFTER"]) == []  # type: ignore[arg-type]
    secret = manifests.build_secret(run, launched, cfg)
    assert base64.b64decode(secret["data"][manifests.STDIN_KEY]) == b"do it\n"


def test_a_codex_pod_runs_its_driver_before_the_binary_the_image_has() -> None:
    from agentfarm.agents import codex

    run, _command, cfg = make()
    spec = run.spec.model_copy(update={"agent": "codex"})
    command = codex.CodexAdapter().build_command(spec, binary="/host/tools/codex")
    pod = manifests.build_pod(run, LaunchSpec.of(run.id, command, {"CODEX_API_KEY": "k"}), cfg)
    argv = pod["spec"]["containers"][0]["command"]
    rest = argv[argv.index("--") + 1 :]
    assert rest[:4] == ["python3", "-S", "-I", "-c"]
    assert rest[5:7] == ["codex", "--json"]
    assert "do it" not in json.dumps(pod)
