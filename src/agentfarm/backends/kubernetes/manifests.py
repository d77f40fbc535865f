"""Pure builders for a run's Secret and Pod, as the JSON the API server takes.

The pod is hardened by default (non-root uid 1000, no privilege escalation, every capability
dropped, seccomp RuntimeDefault, no service-account token, read-only root filesystem with
writable workspace, home and tmp volumes). Secret values (credentials, git tokens, the prompt
on stdin) only ever appear in the Secret; the pod refers to them by key.

The pod has one container, which runs the entrypoint in the agent image
(deploy/agent/entrypoint.py) in its ``run`` mode: it clones the repository (AGENTFARM_CLONE=1),
runs the agent and pushes the branch. Cloning there rather than in an init container saves a
container start (about a second: the kubelet notices an init container's end only at its next
relist). This module is the entrypoint's other half: the ``AGENTFARM_*`` variables it sets are
the entrypoint's whole contract.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from agentfarm.backends.kubernetes.config import PodConfig
from agentfarm.domain import backend_config, errors, gittokens, launch, models

Json = dict[str, Any]

UID = 1000
AGENT_CONTAINER = "agent"
#: The init container that cloned in pods of older control planes (status.py still reads it).
CLONE_CONTAINER = "clone"
ENTRYPOINT = "/opt/agentfarm/entrypoint.py"
WORKSPACE = "/workspace"
HOME = "/home/agent"
INPUT_DIR = "/run/agentfarm"
#: Where the shared ~/.claude (credentials ``shared-home``) is mounted, read-only; the
#: entrypoint copies its credentials file, and nothing else, into the pod's own HOME.
SHARED_CLAUDE = "/mnt/claude-shared"
#: The Secret key holding the agent's first stdin bytes (not a valid env name: no clash).
STDIN_KEY = "agentfarm-stdin"
#: The entrypoint waits this many seconds after its agent exits for resume or finish.
RESUME_WAIT_ENV = "AGENTFARM_RESUME_WAIT"
#: On the run's Secret: the last log line before the agent process resumed in the pod.
SEQ_BASE_ANNOTATION = "agentfarm.dev/seq-base"

LABEL_RUN = "agentfarm.dev/run-id"
LABEL_INSTANCE = "agentfarm.dev/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_CONFIG = "agentfarm.dev/config"

_RUN_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,40}[a-z0-9])?$")


def object_name(run_id: str) -> str:
    """The name shared by a run's pod and Secret."""
    if not _RUN_ID_RE.match(run_id):
        raise errors.LaunchError(f"run id {run_id!r} cannot name a Kubernetes object")
    return f"agentfarm-run-{run_id}"


def labels(run_id: str, instance: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: "agentfarm",
        LABEL_COMPONENT: "agent",
        LABEL_INSTANCE: instance,
        LABEL_RUN: run_id,
    }


def instance_selector(instance: str) -> str:
    return f"{LABEL_MANAGED_BY}=agentfarm,{LABEL_INSTANCE}={instance}"


def run_selector(run_id: str, instance: str) -> str:
    return f"{instance_selector(instance)},{LABEL_RUN}={run_id}"


def git_credentials(
    run: models.Run,
    secrets: Mapping[str, str],
    cfg: PodConfig,
    auth: launch.GitAuth | None = None,
) -> list[Json]:
    """The git token for the run's repository (at most one), as the entrypoint's rule: which
    secret authenticates which URL prefix, with which user name. A token the run's spec
    names (``auth``, from ``git_token_secret``) is that one, under the variable the
    entrypoint expects for the repository's host."""
    if auth is not None:
        return [{"url": auth.prefix, "user": auth.user, "env": auth.env_name}]
    present = {name for name, value in secrets.items() if value}
    token = gittokens.token_for(run.spec.repo, present, cfg.forgejo_url)
    if token is None:
        return []
    return [{"url": token.prefix, "user": token.user, "env": token.name}]


def secret_data(
    run: models.Run,
    secrets: Mapping[str, str],
    cfg: PodConfig,
    auth: launch.GitAuth | None = None,
) -> dict[str, str]:
    """The secrets the run's Secret holds: every credential that is not a git token, and the
    one git token for the run's own repository host (other hosts' tokens stay home)."""
    wanted = {rule["env"] for rule in git_credentials(run, secrets, cfg, auth)}
    kept = {
        name: value
        for name, value in secrets.items()
        if not gittokens.is_git_token(name) or (name in wanted and auth is None)
    }
    if auth is not None:
        kept[auth.env_name] = auth.token
    return kept


def secret_env_names(secrets: Mapping[str, str], cfg: PodConfig) -> list[str]:
    """Secrets that become the agent's environment (credentials, never git tokens)."""
    skip: set[str] = set()
    if cfg.credentials == "shared-home":
        # The shared ~/.claude holds the login; a token would take precedence over it.
        skip |= {"CLAUDE_CODE_OAUTH_TOKEN"}
    return sorted(n for n in secrets if n not in skip and not gittokens.is_git_token(n))


def build_secret(run: models.Run, spec: launch.LaunchSpec, cfg: PodConfig) -> Json:
    name = object_name(run.id)
    kept = secret_data(run, spec.credentials, cfg, spec.git_auth)
    data = {key: _b64(value.encode()) for key, value in sorted(kept.items())}
    data[STDIN_KEY] = _b64(spec.command.stdin)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": cfg.namespace,
            "labels": labels(run.id, cfg.instance),
        },
        "type": "Opaque",
        "data": data,
    }


def owner_reference(pod: Json) -> Json:
    """An ownerReference to ``pod`` (as created), so deleting the pod collects the Secret."""
    meta = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": meta["name"],
        "uid": meta["uid"],
        "blockOwnerDeletion": False,
    }


def resume_wait(pod: Json) -> float:
    """The AGENTFARM_RESUME_WAIT of a pod's agent container (0: absent, the pod does not wait
    after its agent)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") != AGENT_CONTAINER:
            continue
        for item in container.get("env") or []:
            if item.get("name") == RESUME_WAIT_ENV:
                try:
                    return float(item.get("value") or 0)
                except ValueError:
                    return 0.0
    return 0.0


def build_pod(run: models.Run, launching: launch.LaunchSpec, cfg: PodConfig) -> Json:
    name = object_name(run.id)
    spec, command, secrets = run.spec, launching.command, launching.credentials
    token_rules = git_credentials(run, secrets, cfg, launching.git_auth)
    token_env = [_secret_ref(rule["env"], name) for rule in token_rules]
    common_env = [
        {"name": "HOME", "value": HOME},
        {"name": "AGENTFARM_RUN_ID", "value": run.id},
        {"name": "AGENTFARM_REPO", "value": spec.repo},
        {"name": "AGENTFARM_BASE_BRANCH", "value": spec.base_branch or ""},
        {"name": "AGENTFARM_BRANCH", "value": launching.branch},
        {"name": "AGENTFARM_WORKSPACE", "value": WORKSPACE},
        {"name": "AGENTFARM_GIT_CREDENTIALS", "value": json.dumps(token_rules)},
    ]
    ours = {item["name"] for item in common_env}
    agent_env = [
        {"name": key, "value": value}
        for key, value in sorted(command.env.items())
        if key not in ours and key not in secrets
    ]
    agent_env += common_env
    agent_env += [
        {"name": "AGENTFARM_CLONE", "value": "1"},
        {"name": "AGENTFARM_STDIN", "value": f"{INPUT_DIR}/stdin"},
        {"name": "AGENTFARM_CLOSE_STDIN_AFTER", "value": json.dumps(command.close_stdin_after)},
        # Follow-ups and interrupts (the entrypoint's control socket): not secrets.
        {"name": "AGENTFARM_FOLLOWUP_WINDOW", "value": f"{command.followup_window:g}"},
        {"name": "AGENTFARM_REPLAYS", "value": "1" if command.replays else ""},
        {"name": "AGENTFARM_INTERRUPT", "value": base64.b64encode(command.interrupt).decode()},
        {
            "name": "AGENTFARM_INTERRUPTED_WINDOW",
            "value": f"{launch.INTERRUPTED_WINDOW_SECONDS:g}",
        },
        {"name": "AGENTFARM_PUSH", "value": "1"},
        {"name": RESUME_WAIT_ENV, "value": f"{cfg.resume_wait:g}"},
    ]
    agent_env += [_secret_ref(key, name) for key in secret_env_names(secrets, cfg)]
    if cfg.credentials == "shared-home":
        agent_env.append({"name": "AGENTFARM_SHARED_CLAUDE", "value": SHARED_CLAUDE})
    agent_env += token_env

    mounts = [
        {"name": "workspace", "mountPath": WORKSPACE},
        {"name": "home", "mountPath": HOME},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir
    ]
    volumes: list[Json] = [
        {"name": "workspace", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "input",
            "secret": {
                "secretName": name,
                "items": [{"key": STDIN_KEY, "path": "stdin"}],
                "defaultMode": 0o440,
            },
        },
    ]
    agent_mounts = [*mounts, {"name": "input", "mountPath": INPUT_DIR, "readOnly": True}]
    if cfg.credentials == "shared-home":
        volumes.append(
            {
                "name": "claude-home",
                "persistentVolumeClaim": {"claimName": cfg.credentials_claim, "readOnly": True},
            }
        )
        # Read-only, and not the pod's ~/.claude: a run that could write there would plant
        # hooks (settings.json) that every later run executes.
        agent_mounts.append({"name": "claude-home", "mountPath": SHARED_CLAUDE, "readOnly": True})

    # The image's PATH finds the binary (and python3, for a runner).
    argv = command.with_program(posixpath.basename(command.argv[0])) if command.argv else []
    resources = _resources(cfg.resources)
    pod_spec: Json = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": cfg.grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": AGENT_CONTAINER,
                "image": cfg.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["python3", ENTRYPOINT, "run", "--", *argv],
                "env": agent_env,
                "workingDir": WORKSPACE,
                "volumeMounts": agent_mounts,
                "resources": resources,
                "securityContext": _container_security(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": volumes,
    }
    if cfg.runtime_class:
        pod_spec["runtimeClassName"] = cfg.runtime_class
    if cfg.service_account:
        pod_spec["serviceAccountName"] = cfg.service_account
    if cfg.node_selector:
        pod_spec["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        pod_spec["tolerations"] = [_toleration(t) for t in cfg.tolerations]
    annotations = {ANNOTATION_CONFIG: run.config_name} if run.config_name else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": cfg.namespace,
            "labels": labels(run.id, cfg.instance),
            "annotations": annotations,
        },
        "spec": pod_spec,
    }


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _secret_ref(key: str, secret_name: str) -> Json:
    return {"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}


def _container_security() -> Json:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(res: backend_config.K8sResources) -> Json:
    def amounts(a: backend_config.K8sResourceAmounts) -> dict[str, str]:
        out = {"cpu": a.cpu, "memory": a.memory, "ephemeral-storage": a.ephemeral_storage}
        return {k: v for k, v in out.items() if v}

    return {"requests": amounts(res.requests), "limits": amounts(res.limits)}


def _toleration(t: backend_config.K8sToleration) -> Json:
    out: Json = {"operator": t.operator}
    if t.key:
        out["key"] = t.key
    if t.value and t.operator == "Equal":
        out["value"] = t.value
    if t.effect:
        out["effect"] = t.effect
    if t.toleration_seconds is not None:
        out["tolerationSeconds"] = t.toleration_seconds
    return out
