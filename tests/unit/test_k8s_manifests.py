"""The run's pod and Secret, built without a cluster."""

from __future__ import annotations

import base64
import json

import pytest

from agentfarm.agents.base import AgentCommand
from agentfarm.backends.kubernetes import config, manifests
from agentfarm.domain import errors, models
from agentfarm.settings import Settings

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
    pod = json.dumps(manifests.build_pod(run, command, SECRETS, cfg))
    for value in SECRETS.values():
        assert value not in pod
    assert "do it" not in pod
    assert '{"type":"user"}' not in pod


def test_secret_holds_credentials_and_stdin() -> None:
    run, command, cfg = make()
    secret = manifests.build_secret(run, command, SECRETS, cfg)
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert data[manifests.STDIN_KEY] == command.stdin
    assert data["GITHUB_TOKEN"] == b"ghp_secret"
    assert secret["metadata"]["labels"][manifests.LABEL_RUN] == run.id


def test_pod_is_hardened() -> None:
    run, command, cfg = make()
    spec = manifests.build_pod(run, command, SECRETS, cfg)["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["initContainers"] + spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/workspace", "/home/agent", "/tmp"} <= mounts


def test_git_token_goes_to_git_not_to_the_agent_env() -> None:
    run, command, cfg = make()
    pod = manifests.build_pod(run, command, SECRETS | {"FORGEJO_TOKEN": "fj"}, cfg)
    agent = pod["spec"]["containers"][0]
    env = env_of(agent)
    rules = json.loads(env["AGENTFARM_GIT_CREDENTIALS"])  # type: ignore[arg-type]
    assert rules == [
        {"url": "https://github.com/", "user": "x-access-token", "env": "GITHUB_TOKEN"},
        {"url": "https://code.example.org/", "user": "oauth2", "env": "FORGEJO_TOKEN"},
    ]
    assert env["CLAUDE_CODE_OAUTH_TOKEN"] == {
        "secretKeyRef": {"name": "agentfarm-run-abc123def456", "key": "CLAUDE_CODE_OAUTH_TOKEN"}
    }
    assert agent["command"][:5] == ["python3", manifests.ENTRYPOINT, "run", "--", "claude"]
    assert json.loads(env["AGENTFARM_CLOSE_STDIN_AFTER"]) == ["result"]  # type: ignore[arg-type]
    clone_env = env_of(pod["spec"]["initContainers"][0])
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in clone_env
    assert "GITHUB_TOKEN" in clone_env


def test_scheduling_and_runtime_settings() -> None:
    run, command, cfg = make(
        runtime_class="kata-fc",
        node_selector={"agentfarm.dev/pool": "agents"},
        tolerations=[{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="agent",
        resources={"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"memory": "1Gi"}},
    )
    spec = manifests.build_pod(run, command, {}, cfg)["spec"]
    assert spec["runtimeClassName"] == "kata-fc"
    assert spec["nodeSelector"] == {"agentfarm.dev/pool": "agents"}
    assert spec["tolerations"] == [{"operator": "Exists", "key": "agents", "effect": "NoSchedule"}]
    assert spec["serviceAccountName"] == "agent"
    assert spec["containers"][0]["resources"] == {
        "requests": {"memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }


def test_shared_home_mounts_the_claim_and_drops_the_token() -> None:
    run, command, cfg = make(credentials="shared-home")
    pod = manifests.build_pod(run, command, SECRETS, cfg)
    agent = pod["spec"]["containers"][0]
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in env_of(agent)
    assert {"name": "claude-home", "mountPath": "/home/agent/.claude"} in agent["volumeMounts"]
    claims = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [
        {"name": "claude-home", "persistentVolumeClaim": {"claimName": "claude-home"}}
    ]


def test_missing_image_and_bad_run_id_are_clear() -> None:
    spec = models.AgentSpec(repo="https://x/y", backend="kubernetes")
    with pytest.raises(errors.ConfigurationError, match="AGENTFARM_K8S_IMAGE"):
        config.resolve(spec, Settings())
    with pytest.raises(errors.LaunchError, match="cannot name"):
        manifests.object_name("Bad_ID")


def test_kubernetes_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="resources"):
        models.KubernetesSpec.model_validate({"resources": {"limits": {"memory": "lots"}}})
    with pytest.raises(ValueError, match="extra"):
        models.KubernetesSpec.model_validate({"privileged": True})
