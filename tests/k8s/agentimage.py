"""An agent world on the tier-B node, for tests and benchmarks that drive a real agentfarm
server: the agent image imported into the node (once per node), a git origin served over
git:// and the scripted fake model, both on host loopback and relayed to the node IP, which
pods reach, and a namespace for the agent pods.

The image builder and the relay are tests/k8s/test_backend_node.py's, used as they are.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakes import anthropic_api
from tests.k8s import cluster
from tests.k8s.test_backend_node import IMAGE, Relay, import_agent_image

__all__ = ["API_KEY", "IMAGE", "AgentWorld", "agent_world"]

#: The credential the server hands to pods (the fake model accepts anything).
API_KEY = "sk-ant-k8s-node-fake-0123456789"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def make_origin(root: Path) -> Path:
    """A bare repository ``root/origin.git`` with one commit on ``main``, writable by all (the
    git daemon serves pushes as whoever it runs as)."""
    origin = root / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin))
    seed = root.parent / "seed"
    git("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("test repo\n")
    author = ["-C", str(seed), "-c", "user.name=t", "-c", "user.email=t@t"]
    git(*author, "add", ".")
    git(*author, "commit", "-q", "-m", "init")
    git(*author, "push", "-q", str(origin), "main")
    subprocess.run(["chmod", "-R", "a+rwX", str(root)], check=True)
    return origin


@dataclass
class AgentWorld:
    node: cluster.Cluster
    fake: anthropic_api.FakeAnthropic
    origin: Path
    git_port: int
    namespace: str
    image_seconds: float
    instance: str = field(default="api-node-test")

    @property
    def repo_url(self) -> str:
        return f"git://{cluster.NODE_IP}:{self.git_port}/origin.git"

    @property
    def model_url(self) -> str:
        """The fake model as pods see it."""
        return f"http://{cluster.NODE_IP}:{self.fake.port}"

    def server_env(self) -> dict[str, str]:
        """What `agentfarm serve` needs to run agents on this node."""
        return {
            "AGENTFARM_K8S_KUBECONFIG": str(self.node.kubeconfig),
            "AGENTFARM_K8S_NAMESPACE": self.namespace,
            "AGENTFARM_K8S_IMAGE": IMAGE,
            "AGENTFARM_K8S_RUNTIME_CLASS": self.node.runtime_class,
            "AGENTFARM_K8S_INSTANCE": self.instance,
            # The test cleans up the namespace itself; no sweeper in the server.
            "AGENTFARM_K8S_CLEANUP_AFTER_SECONDS": "0",
            "AGENTFARM_STOP_GRACE_SECONDS": "3",
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": self.model_url,
        }

    def spec(self, prompt: str) -> dict[str, object]:
        """A one-off run spec for ``POST /api/runs``."""
        return {
            "repo": self.repo_url,
            "base_branch": "main",
            "backend": {"type": "kubernetes"},
            "prompt": prompt,
            "env": {"CLAUDE_CODE_MAX_RETRIES": "0"},
        }

    def branch_file(self, branch: str, path: str) -> str:
        return git("-C", str(self.origin), "show", f"{branch}:{path}")

    def branch_log(self, branch: str) -> list[str]:
        return git("-C", str(self.origin), "log", "--format=%s", branch).splitlines()

    def delete_pods(self) -> None:
        """Every pod in the namespace, at once (grace 0)."""
        self.node.kubectl(
            "-n", self.namespace, "delete", "pods", "--all", "--grace-period=0", "--force",
            "--wait=false", check=False,
        )  # fmt: skip


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def agent_world(node: cluster.Cluster, work: Path, instance: str) -> Iterator[AgentWorld]:
    """Build and import the image, serve the origin and the fake model to the node's pods and
    make a namespace; on exit stop everything started here and delete the namespace's pods
    and the namespace (without waiting: the node's teardown ends what remains)."""
    with contextlib.ExitStack() as stack:
        image_seconds = import_agent_image(node, work)
        (work / "git").mkdir()
        origin = make_origin(work / "git")
        git_port = cluster.free_port()
        daemon = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
             f"--base-path={work / 'git'}", "--listen=127.0.0.1", f"--port={git_port}",
             str(work / "git")]
        )  # fmt: skip
        stack.callback(_stop_process, daemon)
        fake = anthropic_api.FakeAnthropic().start()
        stack.callback(fake.stop)
        for port in (git_port, fake.port):
            relay = Relay.start(node, port, work)
            stack.callback(relay.stop)
        namespace = node.create_namespace("agents")
        stack.callback(node.kubectl, "delete", "namespace", namespace, "--wait=false", check=False)
        world = AgentWorld(node, fake, origin, git_port, namespace, image_seconds, instance)
        stack.callback(world.delete_pods)
        yield world
