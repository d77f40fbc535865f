"""Start and stop the project's offline Kubernetes test environment.

Two tiers, both built from the binaries `scripts/k8s-testenv/build.sh` caches (see
/work/shared/notes/k8s-testenv.md for the facts behind every choice here):

- Tier A (:func:`start_api`): etcd and kube-apiserver on loopback, free ports, token auth, RBAC.
  No root needed. Real validation, admission, RBAC, watches; no kubelet, so no pod runs and no
  logs; a test plays the kubelet by patching the pod ``status`` subresource.
- Tier B (:func:`start_node`): a full single node, root only. Everything runs inside a private
  mount, network and PID namespace (``unshare``), so host paths, routes and interfaces stay
  untouched and killing the namespace's first process ends every daemon, shim and container.
  Inside: etcd, kube-apiserver, controller-manager, scheduler, containerd (runc and crun as
  runtime handlers) and kubelet (cgroupfs, under a cgroup root of its own that teardown removes).
  The API reaches the host through ``socat``: host loopback -> unix socket -> namespace.

Use it from pytest through ``tests/k8s/conftest.py``, or by hand::

    .venv/bin/python -m tests.k8s.cluster start api|node DIR   # prints the env to use
    .venv/bin/python -m tests.k8s.cluster env DIR
    .venv/bin/python -m tests.k8s.cluster stop DIR
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "k8s-testenv"
STATE_FILE = "cluster.json"

NODE_NAME = "agentfarm-node"
NODE_IP = "10.200.0.1"
NODE_BRIDGE = "agentfarm0"
POD_SUBNET = "10.244.0.0/24"
SERVICE_RANGE = "10.96.0.0/12"
SERVICE_IP = "10.96.0.1"
INNER_API_PORT = 6443
PAUSE_IMAGE = "agentfarm.local/pause:1"
BUSYBOX_IMAGE = "agentfarm.local/busybox:1"
RUNTIME_CLASS = "crun"
CGROUP_PREFIX = "agentfarm-k8s-"
CGROUP_BASE = Path("/sys/fs/cgroup")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ISSUER = "https://kubernetes.default.svc.cluster.local"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl")


class ClusterError(RuntimeError):
    """A tier could not be started or used; the message says which part and where its log is."""


# --- versions and the binary cache -------------------------------------------------------------


def versions() -> dict[str, str]:
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
    """Names of the built binaries (and Debian tools for tier A) that are not there."""
    missing = [b for b in BINARIES if not os.access(bin_dir() / b, os.X_OK)]
    if not (bin_dir() / ".complete").exists() and not missing:
        missing.append(".complete")
    missing += [tool for tool in ("etcd", "openssl") if shutil.which(tool) is None]
    return missing


def missing_node_tools() -> list[str]:
    """Debian tools tier B needs beyond tier A's."""
    tools = ["containerd", "containerd-shim-runc-v2", "ctr", "crun", "runc", "unshare"]
    tools += ["nsenter", "socat", "ip", "gcc", "busybox"]
    found = [t for t in tools if shutil.which(t, path=PATH_ENV) is None]
    if not Path("/usr/lib/cni/bridge").exists():
        found.append("/usr/lib/cni/bridge")
    return found


# --- small helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the test process goes away, however it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # A zombie has exited; only its parent's wait() is missing.
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                found += [
                    int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                ]
    return found


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def make_pki(pki: Path, ip_sans: Sequence[str]) -> None:
    """A CA, the apiserver's serving certificate and the service-account signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=pki)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=agentfarm-test-ca",
        "-days",
        "3650",
        "-out",
        "ca.crt",
        cwd=pki,
    )
    _openssl(
        "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "apiserver.key", cwd=pki
    )
    sans = [
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
    ]
    sans += [f"IP:{ip}" for ip in ip_sans]
    (pki / "apiserver.ext").write_text(
        f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "req",
        "-new",
        "-key",
        "apiserver.key",
        "-subj",
        "/CN=kube-apiserver",
        "-out",
        "apiserver.csr",
        cwd=pki,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        "apiserver.ext",
        "-out",
        "apiserver.crt",
        cwd=pki,
    )
    _openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "sa.key",
        cwd=pki,
    )
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(
    path: Path, server: str, ca_file: Path, token: str, namespace: str = ""
) -> Path:
    """A kubeconfig (JSON is valid YAML) with the CA inlined, so it can be copied anywhere."""
    context: dict[str, str] = {"cluster": "agentfarm-test", "user": "user"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "agentfarm-test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "agentfarm-test", "context": context}],
        "current-context": "agentfarm-test",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


# --- the handles the fixtures hand out ----------------------------------------------------------


@dataclass
class ScopedAccess:
    """A ServiceAccount in a namespace, its token and a kubeconfig that uses it."""

    namespace: str
    service_account: str
    token: str
    kubeconfig: Path


@dataclass
class Cluster:
    """A running tier. ``server``/``admin_token``/``ca_file``/``kubeconfig`` are what a client
    needs; the rest is bookkeeping for :func:`stop` (also saved to ``workdir/cluster.json``)."""

    tier: str  # "api" (tier A) or "node" (tier B)
    workdir: Path
    server: str
    admin_token: str
    ca_file: Path
    kubeconfig: Path
    pids: dict[str, int] = field(default_factory=dict)
    holder_pid: int = 0  # tier B: the unshare process owning the namespaces
    ns_pid: int = 0  # tier B: the namespaces' first process
    cgroup_name: str = ""
    node_name: str = ""
    runtime_class: str = ""
    busybox_image: str = ""
    pause_image: str = ""
    started_in_s: float = 0.0
    # The Popen objects of processes this test process started: polled on stop, so none is
    # garbage-collected while running (a ResourceWarning, an error under pytest here).
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def track(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.procs[name] = proc
        self.pids[name] = proc.pid
        self.save()

    # -- persistence ---------------------------------------------------------------------------

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

    # -- talking to the API --------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

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
        """One blocking API call (loopback, fast): returns (status, decoded JSON or text)."""
        host, _, port = self.server.removeprefix("https://").partition(":")
        conn = http.client.HTTPSConnection(
            host, int(port), context=self.ssl_context(), timeout=timeout
        )
        headers = {
            "Authorization": f"Bearer {token or self.admin_token}",
            "Accept": "application/json",
        }
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
        """POST ``body`` to the collection ``path``; an existing object is fine."""
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
        """A fresh namespace with a unique name (tests share one cluster per session)."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.ensure(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
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
        """Create ``namespace`` (if needed), a ServiceAccount ``name`` in it bound to a Role with
        ``rules`` (RBAC PolicyRule dicts) and, with ``cluster_rules``, to a ClusterRole too; return
        a TokenRequest token for it and a kubeconfig using that token."""
        ns_body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        self.ensure("/api/v1/namespaces", ns_body)
        meta = {"name": name, "namespace": namespace}
        self.ensure(
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        )
        subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        self.ensure(
            f"{rbac}/namespaces/{namespace}/roles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta,
                "rules": rules,
            },
        )
        self.ensure(
            f"{rbac}/namespaces/{namespace}/rolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": subject,
            },
        )
        if cluster_rules is not None:
            cluster_name = f"{namespace}-{name}"
            self.ensure(
                f"{rbac}/clusterroles",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": cluster_name},
                    "rules": cluster_rules,
                },
            )
            self.ensure(
                f"{rbac}/clusterrolebindings",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": cluster_name},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": cluster_name,
                    },
                    "subjects": subject,
                },
            )
        status, result = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        if status != 201:
            raise ClusterError(f"TokenRequest for {namespace}/{name} -> {status}: {result}")
        token: str = result["status"]["token"]
        kubeconfig = self.workdir / f"kubeconfig-{namespace}-{name}"
        write_kubeconfig(kubeconfig, self.server, self.ca_file, token, namespace)
        return ScopedAccess(namespace, name, token, kubeconfig)

    # -- tier B only ---------------------------------------------------------------------------

    def in_namespace(self, *argv: str, input: bytes | None = None, timeout: float = 120) -> str:
        """Run a command inside tier B's mount and network namespaces; returns stdout."""
        if not self.ns_pid:
            raise ClusterError("only tier B (k8s_node) has node namespaces")
        result = subprocess.run(
            ["nsenter", "--target", str(self.ns_pid), "--mount", "--net", "--pid", "--", *argv],
            input=input,
            capture_output=True,
            timeout=timeout,
            env={"PATH": PATH_ENV},
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def import_image(self, tarball: Path) -> str:
        """Import a docker-archive tarball (see scripts/k8s-testenv/build-image.py) into the
        node's containerd, where the kubelet finds it; returns ctr's output. Give pods an image
        reference with an explicit tag other than ``latest`` (nothing can be pulled here)."""
        with tarball.open("rb") as handle:
            data = handle.read()
        return self.in_namespace(
            "ctr",
            "-n",
            "k8s.io",
            "--address",
            "/run/containerd/containerd.sock",
            "images",
            "import",
            "--no-unpack=false",
            "-",
            input=data,
        )

    def memory_rss_mib(self) -> float:
        """Resident memory of every process of this tier (daemons, shims, containers)."""
        pids = set(self.pids.values())
        if self.holder_pid:
            pending = [self.holder_pid]
            while pending:
                pid = pending.pop()
                pids.add(pid)
                pending += _children(pid)
        return sum(_rss_kib(pid) for pid in pids) / 1024


# --- processes ----------------------------------------------------------------------------------


def _spawn(
    argv: Sequence[str], log: Path, *, cwd: Path, tie_to_parent: bool
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={"PATH": PATH_ENV, "HOME": str(cwd)},
            start_new_session=True,
            preexec_fn=_die_with_parent if tie_to_parent else None,
        )


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_until(
    what: str, check: Any, timeout: float, logs: Sequence[Path], pids: dict[str, int]
) -> None:
    """Poll ``check()`` until it is truthy; fail early when a tracked process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError, ClusterError):
            if check():
                return
        for name, pid in pids.items():
            _reap(pid)
            if not _alive(pid):
                log = next((p for p in logs if p.stem == name), None)
                tail = _tail(log) if log else ""
                raise ClusterError(f"{name} exited while waiting for {what}; its log:\n{tail}")
        time.sleep(0.1)
    details = "\n".join(f"--- {log}\n{_tail(log, 10)}" for log in logs)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{details}")


def _etcd_argv(data: Path, client: str, peer: str) -> list[str]:
    return [
        "etcd",
        "--name",
        "test",
        "--data-dir",
        str(data),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        f"test={peer}",
        "--unsafe-no-fsync",
        "--log-level",
        "warn",
        "--logger",
        "zap",
    ]


def _apiserver_argv(workdir: Path, etcd: str, port: int, extra: Sequence[str]) -> list[str]:
    pki = workdir / "pki"
    return [
        str(bin_dir() / "kube-apiserver"),
        f"--etcd-servers={etcd}",
        f"--secure-port={port}",
        "--insecure-port=0",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--token-auth-file={workdir / 'tokens.csv'}",
        f"--service-account-issuer={ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_RANGE}",
        "--disable-admission-plugins=ServiceAccount",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
        *extra,
    ]


def _readyz(server: str, token: str, ca_file: Path) -> bool:
    host, _, port = server.removeprefix("https://").partition(":")
    conn = http.client.HTTPSConnection(
        host, int(port), context=ssl.create_default_context(cafile=str(ca_file)), timeout=2
    )
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
        return b'"true"' in conn.getresponse().read()
    finally:
        conn.close()


# --- tier A -------------------------------------------------------------------------------------


def start_api(workdir: Path, *, tie_to_parent: bool = True, timeout: float = 60) -> Cluster:
    """Tier A: etcd + kube-apiserver on loopback. Raises ClusterError (after cleaning up)."""
    if missing := missing_binaries():
        raise ClusterError(f"missing: {', '.join(missing)}")
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    make_pki(workdir / "pki", ["127.0.0.1"])
    admin_token = secrets.token_hex(24)
    (workdir / "tokens.csv").write_text(f'{admin_token},admin,admin,"system:masters"\n')
    (workdir / "tokens.csv").chmod(0o600)
    etcd_url = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    server = f"https://127.0.0.1:{port}"
    ca_file = workdir / "pki" / "ca.crt"
    cluster = Cluster(
        tier="api",
        workdir=workdir,
        server=server,
        admin_token=admin_token,
        ca_file=ca_file,
        kubeconfig=write_kubeconfig(workdir / "kubeconfig", server, ca_file, admin_token),
    )
    logs = workdir / "logs"
    try:
        etcd = _spawn(
            _etcd_argv(workdir / "etcd", etcd_url, f"http://127.0.0.1:{free_port()}"),
            logs / "etcd.log",
            cwd=workdir,
            tie_to_parent=tie_to_parent,
        )
        cluster.track("etcd", etcd)
        _wait_until("etcd", lambda: _etcd_healthy(etcd_url), 20, [logs / "etcd.log"], cluster.pids)
        extra = [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--authorization-mode=RBAC",
            # No node and no kubelet: the "kubernetes" Service endpoints need no upkeep.
            "--endpoint-reconciler-type=none",
        ]
        apiserver = _spawn(
            _apiserver_argv(workdir, etcd_url, port, extra),
            logs / "kube-apiserver.log",
            cwd=workdir,
            tie_to_parent=tie_to_parent,
        )
        cluster.track("kube-apiserver", apiserver)
        _wait_until(
            "kube-apiserver /readyz",
            lambda: _readyz(server, admin_token, ca_file),
            timeout,
            [logs / "kube-apiserver.log", logs / "etcd.log"],
            cluster.pids,
        )
    except BaseException:
        stop(cluster)
        raise
    cluster.started_in_s = round(time.monotonic() - started, 2)
    cluster.save()
    return cluster


# --- tier B -------------------------------------------------------------------------------------


def _images_dir() -> Path:
    return cache_dir() / "images"


def build_base_images() -> tuple[Path, Path]:
    """The pause and busybox docker-archives, built once into the cache from local files."""
    images = _images_dir()
    pause_tar, busybox_tar = images / "pause.tar", images / "busybox.tar"
    builder = [sys.executable, str(SCRIPTS / "build-image.py")]
    if not pause_tar.exists():
        rootfs = images / "pause-rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        subprocess.run(
            ["gcc", "-static", "-Os", "-s", "-o", str(rootfs / "pause"), str(SCRIPTS / "pause.c")],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *builder,
                "--tag",
                PAUSE_IMAGE,
                "-o",
                str(pause_tar),
                "--entrypoint",
                '["/pause"]',
                str(rootfs),
            ],
            check=True,
            capture_output=True,
        )
        shutil.rmtree(rootfs)
    if not busybox_tar.exists():
        rootfs = images / "busybox-rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        (rootfs / "bin").mkdir(parents=True)
        busybox = shutil.which("busybox", path=PATH_ENV)
        if busybox is None:
            raise ClusterError("busybox is missing: apt-get install busybox-static")
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        applets = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=True
        ).stdout
        for applet in applets.split():
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        for name in ("tmp", "etc", "root", "proc", "sys", "dev"):
            (rootfs / name).mkdir()
        (rootfs / "tmp").chmod(0o1777)
        (rootfs / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        )
        (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        subprocess.run(
            [
                *builder,
                "--tag",
                BUSYBOX_IMAGE,
                "-o",
                str(busybox_tar),
                "--cmd",
                '["sh"]',
                str(rootfs),
            ],
            check=True,
            capture_output=True,
        )
        shutil.rmtree(rootfs)
    return pause_tar, busybox_tar


def _cgroup_dirs(name: str) -> list[Path]:
    """``name`` in every mounted cgroup v1 hierarchy (and v2, if /sys/fs/cgroup is one)."""
    if (CGROUP_BASE / "cgroup.controllers").exists():
        return [CGROUP_BASE / name]
    return [h / name for h in sorted(CGROUP_BASE.iterdir()) if h.is_dir() and h.name != "unified"]


def _create_cgroup_root(name: str) -> None:
    for path in _cgroup_dirs(name):
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            # A new v1 cpuset group starts empty and cannot take tasks until these are copied.
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((path.parent / knob).read_text())


def _remove_cgroup_tree(name: str, timeout: float = 20) -> list[str]:
    """rmdir ``name`` depth-first in every hierarchy, killing leftover tasks (ours by
    construction); returns what could not be removed."""
    deadline = time.monotonic() + timeout
    left: list[str] = []
    while True:
        left = []
        for root in _cgroup_dirs(name):
            if not root.exists():
                continue
            for dirpath, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
                path = Path(dirpath)
                with contextlib.suppress(OSError):
                    for pid in (path / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(str(path))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _remove_stale_cgroups() -> None:
    """Cgroup roots left by a test process that was killed before its teardown."""
    for path in _cgroup_dirs("x"):
        hierarchy = path.parent
        for stale in hierarchy.glob(f"{CGROUP_PREFIX}*"):
            owner = stale.name.removeprefix(CGROUP_PREFIX).split("-")[0]
            if owner.isdigit() and not _alive(int(owner)):
                _remove_cgroup_tree(stale.name, timeout=2)


_NAMESPACE_SETUP = """
set -eu
root="$1"
for d in var/lib var/log run; do
    mkdir -p "$root/$d"
    mount --bind "$root/$d" "/$d"
done
# crun refuses the cgroup "hybrid" layout; only this private mount namespace loses the v2 mount.
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi
ip link set lo up
ip link add {bridge} type bridge
ip addr add {ip}/24 dev {bridge}
ip link set {bridge} up
touch "$root/.namespace-ready"
exec sleep infinity
"""


def _node_files(workdir: Path, cgroup_name: str, tokens: dict[str, str]) -> None:
    inner = f"https://{NODE_IP}:{INNER_API_PORT}"
    ca_file = workdir / "pki" / "ca.crt"
    for user in ("kubelet", "controller-manager", "scheduler"):
        write_kubeconfig(workdir / f"{user}.kubeconfig", inner, ca_file, tokens[user])
    (workdir / "cni").mkdir(exist_ok=True)
    (workdir / "cni" / "10-agentfarm.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "agentfarm",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        "ipMasq": False,
                        "hairpinMode": False,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_SUBNET}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                        },
                    }
                ],
            },
            indent=2,
        )
    )
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    (workdir / "containerd.toml").write_text(
        f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd-opt"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE on the CI VMs: runc/crun fail on oom_score_adj without this.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.containerd.runtimes.{RUNTIME_CLASS}]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.{RUNTIME_CLASS}.options]
  BinaryName = "{shutil.which("crun", path=PATH_ENV)}"
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{workdir / "cni"}"
"""
    )
    (workdir / "kubelet.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "cgroupDriver": "cgroupfs",
                "cgroupRoot": f"/{cgroup_name}",
                "failSwapOn": False,
                "address": NODE_IP,
                "port": 10250,
                "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1",
                "healthzPort": 10248,
                # Reachable only inside the private network namespace, by the apiserver.
                "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
                "authorization": {"mode": "AlwaysAllow"},
                "nodeStatusUpdateFrequency": "1s",
                "nodeStatusReportFrequency": "1s",
                "syncFrequency": "5s",
                "evictionHard": {
                    "memory.available": "1Mi",
                    "nodefs.available": "1%",
                    "nodefs.inodesFree": "1%",
                    "imagefs.available": "1%",
                },
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "makeIPTablesUtilChains": False,
                "resolvConf": "",
                "serializeImagePulls": False,
                "clusterDomain": "cluster.local",
                "maxPods": 50,
            },
            indent=2,
        )
    )


def start_node(workdir: Path, *, tie_to_parent: bool = True, timeout: float = 90) -> Cluster:
    """Tier B: a full single node in private namespaces (root only). Raises ClusterError."""
    if os.geteuid() != 0:
        raise ClusterError("tier B (a full node) needs root")
    if missing := missing_binaries() + missing_node_tools():
        raise ClusterError(f"missing: {', '.join(missing)}")
    workdir = workdir.resolve()
    for hidden in ("/run", "/var/run", "/var/lib", "/var/log"):
        if workdir.is_relative_to(hidden):
            raise ClusterError(f"{workdir} is under {hidden}, which the node namespace hides")
    started = time.monotonic()
    pause_tar, busybox_tar = build_base_images()
    _remove_stale_cgroups()
    workdir.mkdir(parents=True, exist_ok=True)
    make_pki(workdir / "pki", ["127.0.0.1", NODE_IP, SERVICE_IP])
    tokens = {
        user: secrets.token_hex(24)
        for user in ("admin", "kubelet", "controller-manager", "scheduler")
    }
    (workdir / "tokens.csv").write_text(
        f'{tokens["admin"]},admin,admin,"system:masters"\n'
        f'{tokens["kubelet"]},system:node:{NODE_NAME},kubelet,"system:nodes"\n'
        # The controllers and the scheduler need broad rights; a test cluster keeps it simple.
        f'{tokens["controller-manager"]},system:kube-controller-manager,kcm,"system:masters"\n'
        f'{tokens["scheduler"]},system:kube-scheduler,scheduler,"system:masters"\n'
    )
    (workdir / "tokens.csv").chmod(0o600)
    cgroup_name = f"{CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    _node_files(workdir, cgroup_name, tokens)
    port = free_port()
    server = f"https://127.0.0.1:{port}"
    ca_file = workdir / "pki" / "ca.crt"
    cluster = Cluster(
        tier="node",
        workdir=workdir,
        server=server,
        admin_token=tokens["admin"],
        ca_file=ca_file,
        kubeconfig=write_kubeconfig(workdir / "kubeconfig", server, ca_file, tokens["admin"]),
        cgroup_name=cgroup_name,
        node_name=NODE_NAME,
        runtime_class=RUNTIME_CLASS,
        busybox_image=BUSYBOX_IMAGE,
        pause_image=PAUSE_IMAGE,
    )
    logs = workdir / "logs"
    nsroot = workdir / "nsroot"
    try:
        _create_cgroup_root(cgroup_name)
        cluster.save()
        setup = _NAMESPACE_SETUP.format(bridge=NODE_BRIDGE, ip=NODE_IP)
        holder = _spawn(
            [
                "unshare",
                "--mount",
                "--net",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                setup,
                "setup",
                str(nsroot),
            ],
            logs / "namespace.log",
            cwd=workdir,
            tie_to_parent=tie_to_parent,
        )
        cluster.holder_pid = holder.pid
        cluster.procs["namespace"] = holder
        cluster.save()
        _wait_until(
            "the node namespaces",
            lambda: (nsroot / ".namespace-ready").exists() and _children(holder.pid),
            15,
            [logs / "namespace.log"],
            {"namespace": holder.pid},
        )
        cluster.ns_pid = _children(holder.pid)[0]
        cluster.save()

        def inside(name: str, argv: Sequence[str]) -> None:
            enter = ["nsenter", "--target", str(cluster.ns_pid), "--mount", "--net", "--pid", "--"]
            proc = _spawn([*enter, *argv], logs / f"{name}.log", cwd=workdir, tie_to_parent=False)
            deadline = time.monotonic() + 5
            while not (kids := _children(proc.pid)) and time.monotonic() < deadline:
                _reap(proc.pid)
                if not _alive(proc.pid):
                    raise ClusterError(f"{name} did not start: {_tail(logs / f'{name}.log')}")
                time.sleep(0.01)
            if not kids:
                raise ClusterError(f"{name} did not start in the node namespaces")
            # nsenter forwards no signals: keep the real daemon's pid for an orderly stop.
            cluster.pids[name] = kids[0]
            cluster.track(f"{name}-nsenter", proc)

        etcd_url = "http://127.0.0.1:2379"
        inside("etcd", _etcd_argv(nsroot / "etcd", etcd_url, "http://127.0.0.1:2380"))
        inside("containerd", ["containerd", "--config", str(workdir / "containerd.toml")])
        sock = workdir / "apiserver.sock"
        inside(
            "socat-inner",
            [
                "socat",
                f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600",
                f"TCP:{NODE_IP}:{INNER_API_PORT}",
            ],
        )
        outer = _spawn(
            ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{sock}"],
            logs / "socat-outer.log",
            cwd=workdir,
            tie_to_parent=tie_to_parent,
        )
        cluster.track("socat-outer", outer)
        _wait_until(
            "etcd",
            lambda: (
                '"health":"true"'
                in cluster.in_namespace(
                    "socat",
                    "-T",
                    "2",
                    "-",
                    "TCP:127.0.0.1:2379",
                    input=b"GET /health HTTP/1.0\r\n\r\n",
                    timeout=5,
                )
            ),
            20,
            [logs / "etcd.log"],
            {"etcd": cluster.pids["etcd"]},
        )
        extra = [
            "--bind-address=0.0.0.0",
            f"--advertise-address={NODE_IP}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--kubelet-preferred-address-types=InternalIP",
        ]
        inside("kube-apiserver", _apiserver_argv(workdir, etcd_url, INNER_API_PORT, extra))
        inside(
            "kube-controller-manager",
            [
                str(bin_dir() / "kube-controller-manager"),
                f"--kubeconfig={workdir / 'controller-manager.kubeconfig'}",
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
                f"--service-account-private-key-file={workdir / 'pki' / 'sa.key'}",
                f"--root-ca-file={ca_file}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--v=1",
            ],
        )
        inside(
            "kube-scheduler",
            [
                str(bin_dir() / "kube-scheduler"),
                f"--kubeconfig={workdir / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
                "--v=1",
            ],
        )
        _wait_until(
            "kube-apiserver /readyz",
            lambda: _readyz(server, tokens["admin"], ca_file),
            timeout,
            [logs / "kube-apiserver.log", logs / "etcd.log", logs / "socat-outer.log"],
            {k: v for k, v in cluster.pids.items() if not k.endswith("-nsenter")},
        )
        cluster.import_image(pause_tar)
        cluster.import_image(busybox_tar)
        inside(
            "kubelet",
            [
                str(bin_dir() / "kubelet"),
                f"--config={workdir / 'kubelet.yaml'}",
                f"--kubeconfig={workdir / 'kubelet.kubeconfig'}",
                "--container-runtime=remote",
                "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--root-dir=/var/lib/kubelet",
                f"--cert-dir={workdir / 'kubelet-pki'}",
                f"--pod-infra-container-image={PAUSE_IMAGE}",
                "--v=1",
            ],
        )
        cluster.ensure(
            "/apis/node.k8s.io/v1/runtimeclasses",
            {
                "apiVersion": "node.k8s.io/v1",
                "kind": "RuntimeClass",
                "metadata": {"name": RUNTIME_CLASS},
                "handler": RUNTIME_CLASS,
            },
        )

        def node_ready() -> bool:
            status, node = cluster.request("GET", f"/api/v1/nodes/{NODE_NAME}")
            if status != 200:
                return False
            conditions = node.get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        _wait_until(
            f"node {NODE_NAME} Ready",
            node_ready,
            timeout,
            [logs / "kubelet.log", logs / "containerd.log"],
            {k: v for k, v in cluster.pids.items() if not k.endswith("-nsenter")},
        )
    except BaseException:
        stop(cluster)
        raise
    cluster.started_in_s = round(time.monotonic() - started, 2)
    cluster.save()
    return cluster


# --- stop ---------------------------------------------------------------------------------------

_STOP_ORDER = (
    "kubelet",
    "kube-scheduler",
    "kube-controller-manager",
    "containerd",
    "socat-outer",
    "socat-inner",
    "kube-apiserver",
    "etcd",
)


def stop(cluster: Cluster) -> list[str]:
    """Stop a tier: daemons in order (the apiserver before etcd), then the namespaces and the
    cgroups. Safe to call twice and on a half-started tier. Returns problems left behind."""
    for name in _STOP_ORDER:
        pid = cluster.pids.get(name)
        if pid:
            _terminate(pid, timeout=10)
    for name, pid in cluster.pids.items():
        if name not in _STOP_ORDER:
            _terminate(pid, timeout=2)
    if cluster.holder_pid:
        # SIGKILL to unshare reaches the namespace's first process (--kill-child), and its death
        # kills every process left in the PID namespace: shims, pause and container processes.
        with contextlib.suppress(ProcessLookupError):
            os.kill(cluster.holder_pid, signal.SIGKILL)
        if cluster.ns_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(cluster.ns_pid, signal.SIGKILL)
        _terminate(cluster.holder_pid, timeout=5)
        deadline = time.monotonic() + 10
        while cluster.ns_pid and _alive(cluster.ns_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    for proc in cluster.procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    problems: list[str] = []
    if cluster.cgroup_name:
        problems += [f"cgroup left: {p}" for p in _remove_cgroup_tree(cluster.cgroup_name)]
    still = [f"{name} ({pid})" for name, pid in cluster.pids.items() if _alive(pid)]
    if still:
        problems.append(f"processes still alive: {', '.join(still)}")
    return problems


@contextlib.contextmanager
def running(tier: str, workdir: Path) -> Iterator[Cluster]:
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
    parser = argparse.ArgumentParser(prog="python -m tests.k8s.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start", help="start a tier in DIR and print its environment")
    start_cmd.add_argument("tier", choices=["api", "node"])
    start_cmd.add_argument("dir", type=Path)
    for name in ("stop", "env", "status"):
        sub.add_parser(name).add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    workdir: Path = args.dir.resolve()
    if args.command == "start":
        starter = start_api if args.tier == "api" else start_node
        try:
            cluster = starter(workdir, tie_to_parent=False)
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
    elif args.command == "status":
        alive = {name: _alive(pid) for name, pid in cluster.pids.items()}
        print(json.dumps({"alive": alive, "rss_mib": round(cluster.memory_rss_mib())}, indent=2))
    else:
        problems = stop(cluster)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
