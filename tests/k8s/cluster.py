"""Start and stop the project's offline Kubernetes test environment.

Two tiers, both run from the binaries ``scripts/k8s-testenv/build.sh`` caches (the facts behind
the choices here: /work/shared/notes/k8s-testenv.md):

- Tier A (:func:`start_api`): etcd and kube-apiserver on loopback, free ports, token auth, RBAC.
  No root needed. Real validation, admission, RBAC, watches; no kubelet, so no pod runs and no
  logs; a test plays the kubelet by patching the pod ``status`` subresource.
- Tier B (:func:`start_node`, in ``tests/k8s/node.py``): a full single node, root only, inside
  private mount, network and PID namespaces.

Both hand out a :class:`Cluster`. Use them from pytest through ``tests/k8s/conftest.py``, or by
hand (``start`` leaves the tier running and prints the environment to use)::

    .venv/bin/python -m tests.k8s.cluster start api|node DIR
    .venv/bin/python -m tests.k8s.cluster env|status|stop DIR
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tests.k8s import pki, processes

# Re-exported: the tests of the Kubernetes backend use them as cluster.<name>.
from tests.k8s.processes import PATH_ENV as PATH_ENV
from tests.k8s.processes import ClusterError as ClusterError
from tests.k8s.processes import free_port as free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "k8s-testenv"
STATE_FILE = "cluster.json"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl")
ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_RANGE = "10.96.0.0/12"
SERVICE_IP = "10.96.0.1"
# Tier B's node, inside its private network namespace (see tests/k8s/node.py).
NODE_NAME = "agentfarm-node"
NODE_IP = "10.200.0.1"
RUNTIME_CLASS = "crun"
PAUSE_IMAGE = "agentfarm.local/pause:1"
BUSYBOX_IMAGE = "agentfarm.local/busybox:1"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"


# --- the binary cache ---------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """The pins of scripts/k8s-testenv/versions.env."""
    values: dict[str, str] = {}
    for line in (SCRIPTS / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def cache_dir() -> Path:
    base = os.environ.get("AGENTFARM_K8S_CACHE") or str(Path.home() / ".cache/agentfarm/k8s")
    return Path(base) / versions()["KUBE_VERSION"]


def bin_dir() -> Path:
    return cache_dir() / "bin"


def missing_binaries() -> list[str]:
    """What tier A needs and is not there: the built binaries, etcd, openssl."""
    missing = [b for b in BINARIES if not os.access(bin_dir() / b, os.X_OK)]
    if not missing and not (bin_dir() / ".complete").exists():
        missing.append(str(bin_dir() / ".complete"))
    return missing + [t for t in ("etcd", "openssl") if shutil.which(t, path=PATH_ENV) is None]


# --- the handle the fixtures hand out -----------------------------------------------------------


@dataclass
class ScopedAccess:
    """A ServiceAccount in a namespace, its token and a kubeconfig that uses it."""

    namespace: str
    service_account: str
    token: str
    kubeconfig: Path


@dataclass
class Cluster:
    """A running tier: ``server``, ``admin_token``, ``ca_file`` and ``kubeconfig`` are what a
    client needs; the rest is bookkeeping for :func:`stop`, saved in ``workdir/cluster.json``."""

    tier: str  # "api" (tier A) or "node" (tier B)
    workdir: Path
    server: str
    admin_token: str
    ca_file: Path
    kubeconfig: Path
    pids: dict[str, int] = field(default_factory=dict)
    holder_pid: int = 0  # tier B: the `unshare` process owning the namespaces
    ns_pid: int = 0  # tier B: the namespaces' first process (nsenter --target)
    cgroup_name: str = ""  # tier B: the kubelet's cgroup root, in every hierarchy
    node_name: str = ""
    runtime_class: str = ""
    busybox_image: str = ""
    pause_image: str = ""
    started_in_s: float = 0.0
    # Popen objects of what this process started: waited for on stop, so none is collected
    # while running (a ResourceWarning, which pytest here turns into an error).
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def track(self, name: str, proc: subprocess.Popen[bytes], pid: int = 0) -> None:
        self.procs[name] = proc
        self.pids[name] = pid or proc.pid
        self.save()

    def save(self) -> None:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "procs"}
        for key in ("workdir", "ca_file", "kubeconfig"):
            data[key] = str(data[key])
        (self.workdir / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> Cluster:
        data: dict[str, Any] = json.loads((workdir / STATE_FILE).read_text())
        for key in ("workdir", "ca_file", "kubeconfig"):
            data[key] = Path(data[key])
        return cls(**data)

    # -- the API -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """One blocking API call (loopback, fast), as admin unless ``token`` is given:
        returns (HTTP status, decoded JSON or the text)."""
        host, _, port = self.server.removeprefix("https://").partition(":")
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=timeout)
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        headers["Accept"] = "application/json"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read().decode(errors="replace")
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except json.JSONDecodeError:
            return response.status, raw

    def ensure(self, path: str, body: dict[str, Any]) -> None:
        """POST ``body`` to the collection ``path``; an object that already exists is fine."""
        status, result = self.request("POST", path, body)
        if status not in (200, 201, 409):
            raise ClusterError(f"POST {path} -> {status}: {result}")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run the cached kubectl as admin; returns stdout."""
        result = subprocess.run(
            [str(bin_dir() / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def create_namespace(self, prefix: str = "test") -> str:
        """A new namespace with a unique name (the tests of a session share one cluster)."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self.ensure("/api/v1/namespaces", body)
        return name

    def service_account_access(
        self,
        namespace: str,
        rules: list[dict[str, Any]],
        *,
        name: str = "tester",
        cluster_rules: list[dict[str, Any]] | None = None,
        expiration_seconds: int = 3600,
    ) -> ScopedAccess:
        """Create ``namespace`` (if needed) and a ServiceAccount ``name`` in it bound to a Role
        with ``rules`` (RBAC PolicyRule dicts) and, given ``cluster_rules``, to a ClusterRole;
        return a TokenRequest token for it and a kubeconfig using that token."""
        rbac = "rbac.authorization.k8s.io"
        self.ensure(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )
        meta = {"name": name, "namespace": namespace}
        self.ensure(
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        )
        subjects = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
        role = {"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": meta, "rules": rules}
        self.ensure(f"/apis/{rbac}/v1/namespaces/{namespace}/roles", role)
        binding = {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
            "subjects": subjects,
        }
        self.ensure(f"/apis/{rbac}/v1/namespaces/{namespace}/rolebindings", binding)
        if cluster_rules is not None:
            cluster_meta = {"name": f"{namespace}-{name}"}
            cluster_role = {
                "apiVersion": f"{rbac}/v1",
                "kind": "ClusterRole",
                "metadata": cluster_meta,
                "rules": cluster_rules,
            }
            self.ensure(f"/apis/{rbac}/v1/clusterroles", cluster_role)
            cluster_binding = {
                "apiVersion": f"{rbac}/v1",
                "kind": "ClusterRoleBinding",
                "metadata": cluster_meta,
                "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": cluster_meta["name"]},
                "subjects": subjects,
            }
            self.ensure(f"/apis/{rbac}/v1/clusterrolebindings", cluster_binding)
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        status, result = self.request("POST", path, request)
        if status != 201:
            raise ClusterError(f"TokenRequest for {namespace}/{name} -> {status}: {result}")
        token: str = result["status"]["token"]
        kubeconfig = self.workdir / f"kubeconfig-{namespace}-{name}"
        pki.write_kubeconfig(kubeconfig, self.server, self.ca_file, token, namespace)
        return ScopedAccess(namespace, name, token, kubeconfig)

    # -- tier B only ---------------------------------------------------------------------------

    def in_namespace(self, *argv: str, input: bytes | None = None, timeout: float = 120) -> str:
        """Run ``argv`` inside tier B's mount, network and PID namespaces; returns stdout."""
        if not self.ns_pid:
            raise ClusterError("only tier B (k8s_node) has node namespaces")
        enter = ["nsenter", "--target", str(self.ns_pid), "--mount", "--net", "--pid", "--"]
        result = subprocess.run(
            [*enter, *argv],
            input=input,
            capture_output=True,
            timeout=timeout,
            env={"PATH": PATH_ENV},
            check=False,
        )
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise ClusterError(f"{' '.join(argv)} failed ({result.returncode}): {stderr}")
        return result.stdout.decode(errors="replace")

    def import_image(self, tarball: Path) -> str:
        """Import a docker-archive tarball (scripts/k8s-testenv/build-image.py makes them) into
        the node's containerd, where the kubelet finds it; returns ctr's output. Pods must name
        the image with an explicit tag other than ``latest``: nothing can be pulled here."""
        with tarball.open("rb") as handle:
            data = handle.read()
        ctr = ["ctr", "-n", "k8s.io", "--address", CONTAINERD_SOCKET]
        return self.in_namespace(*ctr, "images", "import", "-", input=data)

    def memory_rss_mib(self) -> float:
        """Resident memory of every process of this tier (daemons, shims, containers)."""
        pids = set(self.pids.values())
        if self.holder_pid:
            pids.update(processes.descendants(self.holder_pid))
        return sum(processes.rss_kib(pid) for pid in pids) / 1024


# --- tier A -------------------------------------------------------------------------------------


def etcd_argv(data: Path, client: str, peer: str) -> list[str]:
    return ["etcd", "--name", "test", "--data-dir", str(data),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            "--unsafe-no-fsync", "--log-level", "warn", "--logger", "zap"]  # fmt: skip


def apiserver_argv(workdir: Path, etcd: str, port: int, extra: Sequence[str]) -> list[str]:
    keys = workdir / "pki"
    return [
        str(bin_dir() / "kube-apiserver"),
        f"--etcd-servers={etcd}",
        f"--secure-port={port}",
        "--insecure-port=0",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={keys / 'apiserver.crt'}",
        f"--tls-private-key-file={keys / 'apiserver.key'}",
        f"--client-ca-file={keys / 'ca.crt'}",
        f"--token-auth-file={workdir / 'tokens.csv'}",
        f"--service-account-issuer={ISSUER}",
        f"--service-account-key-file={keys / 'sa.pub'}",
        f"--service-account-signing-key-file={keys / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_RANGE}",
        # Pods need no ServiceAccount object and get no token volume unless they ask.
        "--disable-admission-plugins=ServiceAccount",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
        *extra,
    ]


def write_tokens(workdir: Path, lines: Sequence[str]) -> None:
    path = workdir / "tokens.csv"
    path.write_text("".join(f"{line}\n" for line in lines))
    path.chmod(0o600)


def readyz(server: str, token: str, ca_file: Path) -> bool:
    host, _, port = server.removeprefix("https://").partition(":")
    context = ssl.create_default_context(cafile=str(ca_file))
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=2)
    try:
        conn.request("GET", "/readyz", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status == 200 and response.read().strip() == b"ok"
    finally:
        conn.close()


def _etcd_healthy(url: str) -> bool:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", "/health")
        return b'"health":"true"' in conn.getresponse().read()
    finally:
        conn.close()


def with_port_retries(start: Callable[[], Cluster], workdir: Path) -> Cluster:
    """Run ``start`` again (in an emptied ``workdir``) when a port picked as free was taken
    by someone else in the meantime; other errors are raised at once."""
    for attempt in range(3):
        try:
            return start()
        except ClusterError as error:
            if attempt == 2 or "address already in use" not in str(error).lower():
                raise
            shutil.rmtree(workdir, ignore_errors=True)
    raise AssertionError("unreachable")


def start_api(workdir: Path, *, tie_to_parent: bool = True, timeout: float = 60) -> Cluster:
    """Tier A: etcd + kube-apiserver on loopback. Raises ClusterError, after cleaning up."""
    if missing := missing_binaries():
        raise ClusterError(f"missing: {', '.join(missing)}")
    workdir = workdir.resolve()
    return with_port_retries(lambda: _start_api(workdir, tie_to_parent, timeout), workdir)


def _start_api(workdir: Path, tie_to_parent: bool, timeout: float) -> Cluster:
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    pki.make_pki(workdir / "pki", ["127.0.0.1"])
    admin_token = secrets.token_hex(24)
    write_tokens(workdir, [f'{admin_token},admin,admin,"system:masters"'])
    port = free_port()
    server = f"https://127.0.0.1:{port}"
    ca_file = workdir / "pki" / "ca.crt"
    kubeconfig = pki.write_kubeconfig(workdir / "kubeconfig", server, ca_file, admin_token)
    cluster = Cluster("api", workdir, server, admin_token, ca_file, kubeconfig)
    logs = {name: workdir / "logs" / f"{name}.log" for name in ("etcd", "kube-apiserver")}
    etcd_url = f"http://127.0.0.1:{free_port()}"
    try:
        peer = f"http://127.0.0.1:{free_port()}"
        argv = etcd_argv(workdir / "etcd", etcd_url, peer)
        cluster.track(
            "etcd", processes.spawn(argv, logs["etcd"], cwd=workdir, tie_to_parent=tie_to_parent)
        )
        processes.wait_until("etcd", lambda: _etcd_healthy(etcd_url), 20, logs, cluster.pids)
        extra = [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--authorization-mode=RBAC",
            # No node and no kube-proxy: the "kubernetes" Service endpoints need no upkeep.
            "--endpoint-reconciler-type=none",
        ]
        argv = apiserver_argv(workdir, etcd_url, port, extra)
        apiserver = processes.spawn(
            argv, logs["kube-apiserver"], cwd=workdir, tie_to_parent=tie_to_parent
        )
        cluster.track("kube-apiserver", apiserver)
        processes.wait_until(
            "kube-apiserver /readyz",
            lambda: readyz(server, admin_token, ca_file),
            timeout,
            logs,
            cluster.pids,
        )
    except BaseException:
        stop(cluster)
        raise
    cluster.started_in_s = round(time.monotonic() - started, 2)
    cluster.save()
    return cluster


def start_node(workdir: Path, *, tie_to_parent: bool = True, timeout: float = 90) -> Cluster:
    """Tier B: a full single node (root only); see tests/k8s/node.py."""
    from tests.k8s import node  # node builds on this module

    return node.start(workdir, tie_to_parent=tie_to_parent, timeout=timeout)


# --- stop ---------------------------------------------------------------------------------------

# The kubelet first (no new containers), the apiserver before etcd.
STOP_ORDER = ("kubelet", "kube-scheduler", "kube-controller-manager", "containerd",
              "socat-outer", "socat-inner", "kube-apiserver", "etcd")  # fmt: skip


def stop(cluster: Cluster) -> list[str]:
    """Stop a tier: the daemons in order, then (tier B) the namespaces and the cgroups. Safe to
    call twice and on a half-started tier. Returns what could not be cleaned up."""
    for name in STOP_ORDER:
        if pid := cluster.pids.get(name):
            processes.terminate(pid, timeout=10)
    for name, pid in cluster.pids.items():
        if name not in STOP_ORDER:
            processes.terminate(pid, timeout=2)
    if cluster.holder_pid:
        # SIGKILL to `unshare` reaches the namespace's first process (--kill-child), and its
        # death kills everything left in the PID namespace: shims, pause and containers.
        for pid in (cluster.holder_pid, cluster.ns_pid):
            with contextlib.suppress(ProcessLookupError):
                if pid:
                    os.kill(pid, signal.SIGKILL)
        processes.terminate(cluster.holder_pid, timeout=5)
        deadline = time.monotonic() + 10
        while cluster.ns_pid and processes.alive(cluster.ns_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    for proc in cluster.procs.values():
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    problems: list[str] = []
    if cluster.cgroup_name:
        from tests.k8s import node

        problems += [f"cgroup left: {path}" for path in node.remove_cgroups(cluster.cgroup_name)]
    still = [f"{name} ({pid})" for name, pid in cluster.pids.items() if processes.alive(pid)]
    if still:
        problems.append(f"processes still alive: {', '.join(still)}")
    return problems


@contextlib.contextmanager
def running(tier: str, workdir: Path) -> Iterator[Cluster]:
    """A tier for the duration of a ``with`` block (benchmarks, scripts)."""
    cluster = start_api(workdir) if tier == "api" else start_node(workdir)
    try:
        yield cluster
    finally:
        stop(cluster)


# --- command line -------------------------------------------------------------------------------


def _env_lines(cluster: Cluster) -> str:
    return (
        f"export KUBECONFIG={cluster.kubeconfig}\n"
        f"export K8S_SERVER={cluster.server}\n"
        f"export K8S_TOKEN={cluster.admin_token}\n"
        f"export PATH={bin_dir()}:$PATH\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.k8s.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start", help="start a tier in DIR, print its environment")
    start_cmd.add_argument("tier", choices=["api", "node"])
    start_cmd.add_argument("dir", type=Path)
    for name, text in (("env", "print the environment"), ("status", "which daemons run"),
                       ("stop", "stop and clean up")):  # fmt: skip
        sub.add_parser(name, help=text).add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    workdir: Path = args.dir.resolve()
    if args.command == "start":
        try:
            if args.tier == "api":
                cluster = start_api(workdir, tie_to_parent=False)
            else:
                cluster = start_node(workdir, tie_to_parent=False)
        except ClusterError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        rss = cluster.memory_rss_mib()
        print(f"# tier {args.tier} up in {cluster.started_in_s} s, {rss:.0f} MiB RSS")
        print(_env_lines(cluster), end="")
        return 0
    if not (workdir / STATE_FILE).exists():
        print(f"error: no cluster in {workdir}", file=sys.stderr)
        return 1
    cluster = Cluster.load(workdir)
    if args.command == "env":
        print(_env_lines(cluster), end="")
        return 0
    if args.command == "status":
        up = {name: processes.alive(pid) for name, pid in cluster.pids.items()}
        print(json.dumps({"alive": up, "rss_mib": round(cluster.memory_rss_mib())}, indent=2))
        return 0
    problems = stop(cluster)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
