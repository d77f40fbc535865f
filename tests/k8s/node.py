"""Tier B: a full single Kubernetes node for the tests, root only.

Everything runs inside private mount, network and PID namespaces made by ``unshare``:
- mounts: private directories over /var/lib, /var/log and /run, so containerd, the kubelet and
  CNI keep their state in the work directory; the cgroup v2 mount is unmounted there only
  (crun refuses the "hybrid" layout);
- network: ``lo`` and a bridge carrying the node IP, no default route; pods get a CNI bridge
  of their own. The API reaches the host as host loopback -> unix socket -> namespace (socat);
- PID: SIGKILL to the namespace's first process ends every daemon, shim and container.
The kubelet uses the cgroupfs driver under a cgroup root of its own in each hierarchy, which
teardown removes (kubelet would otherwise leave ``kubepods`` groups in the host tree).

containerd has two runtime handlers, runc (default) and crun; RuntimeClass ``crun`` names the
latter and stands in for ``kata-fc``. No image can be pulled: ``agentfarm.local/pause:1`` and
``agentfarm.local/busybox:1`` are built from local files and imported at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.k8s import cluster as base
from tests.k8s import pki, processes
from tests.k8s.processes import PATH_ENV, ClusterError

NODE_BRIDGE = "agentfarm0"
POD_SUBNET = "10.244.0.0/24"
INNER_API_PORT = 6443
CGROUP_PREFIX = "agentfarm-k8s-"
CGROUP_BASE = Path("/sys/fs/cgroup")
DAEMONS = ("etcd", "containerd", "socat-inner", "socat-outer", "kube-apiserver",
           "kube-controller-manager", "kube-scheduler", "kubelet")  # fmt: skip


def missing_tools() -> list[str]:
    """The Debian tools tier B needs beyond tier A's."""
    tools = ["containerd", "containerd-shim-runc-v2", "ctr", "crun", "runc", "unshare",
             "nsenter", "mountpoint", "socat", "ip", "gcc", "busybox"]  # fmt: skip
    found = [tool for tool in tools if shutil.which(tool, path=PATH_ENV) is None]
    return found + [
        p for p in ("/usr/lib/cni/bridge", "/usr/lib/cni/loopback") if not Path(p).exists()
    ]


# --- images -------------------------------------------------------------------------------------


def _build_image(tag: str, rootfs: Path, output: Path, *config: str) -> None:
    builder = [sys.executable, str(base.SCRIPTS / "build-image.py")]
    result = subprocess.run(
        [*builder, "--tag", tag, "-o", str(output), *config, str(rootfs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ClusterError(f"building {tag} failed: {result.stderr.strip()}")


def base_images() -> list[Path]:
    """The pause and busybox docker-archives, built once into the cache from local files."""
    images = base.cache_dir() / "images"
    pause_tar, busybox_tar = images / "pause.tar", images / "busybox.tar"
    if not pause_tar.exists():
        rootfs = images / "pause-rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        compile_pause = ["gcc", "-static", "-Os", "-s", "-o", str(rootfs / "pause"),
                         str(base.SCRIPTS / "pause.c")]  # fmt: skip
        result = subprocess.run(compile_pause, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ClusterError(f"compiling pause.c failed: {result.stderr.strip()}")
        _build_image(base.PAUSE_IMAGE, rootfs, pause_tar, "--entrypoint", '["/pause"]')
        shutil.rmtree(rootfs)
    if not busybox_tar.exists():
        busybox = shutil.which("busybox", path=PATH_ENV)
        if busybox is None:
            raise ClusterError("busybox is missing: apt-get install busybox-static")
        rootfs = images / "busybox-rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        listed = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
        for applet in listed.stdout.split():
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        for name in ("tmp", "etc", "root", "proc", "sys", "dev"):
            (rootfs / name).mkdir()
        (rootfs / "tmp").chmod(0o1777)
        (rootfs / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        )
        (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        _build_image(base.BUSYBOX_IMAGE, rootfs, busybox_tar, "--cmd", '["sh"]')
        shutil.rmtree(rootfs)
    return [pause_tar, busybox_tar]


# --- cgroups ------------------------------------------------------------------------------------


def _cgroup_dirs(name: str) -> list[Path]:
    """``name`` in every mounted cgroup v1 hierarchy, or in the v2 tree if that is all."""
    if (CGROUP_BASE / "cgroup.controllers").exists():
        return [CGROUP_BASE / name]
    return [h / name for h in sorted(CGROUP_BASE.iterdir()) if h.is_dir() and h.name != "unified"]


def _create_cgroups(name: str) -> None:
    for path in _cgroup_dirs(name):
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            # A new v1 cpuset group starts empty and takes no task until these are filled in.
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((path.parent / knob).read_text())


def remove_cgroups(name: str, timeout: float = 20) -> list[str]:
    """rmdir the cgroup ``name`` depth-first in every hierarchy, SIGKILLing tasks left in it
    (ours by construction); returns the paths that could not be removed."""
    deadline = time.monotonic() + timeout
    while True:
        left: list[str] = []
        for root in _cgroup_dirs(name):
            if not root.exists():
                continue
            for dirpath, _, _ in sorted(os.walk(root), key=lambda walk: -len(walk[0])):
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
    """Cgroup roots of nodes whose namespace holder is gone without a teardown (the test
    process was SIGKILLed): every process of such a node died with its PID namespace."""
    for hierarchy in {path.parent for path in _cgroup_dirs("x")}:
        for stale in hierarchy.glob(f"{CGROUP_PREFIX}*"):
            owner = stale.name.removeprefix(CGROUP_PREFIX)
            if owner.isdigit() and not processes.alive(int(owner)):
                remove_cgroups(stale.name, timeout=2)


# --- configuration files ------------------------------------------------------------------------

NAMESPACE_SETUP = """
set -eu
root="$1"
for d in var/lib var/log run; do
    mkdir -p "$root/$d"
    mount --bind "$root/$d" "/$d"
done
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi
ip link set lo up
ip link add {bridge} type bridge
ip addr add {ip}/24 dev {bridge}
ip link set {bridge} up
touch "$root/.namespace-ready"
exec sleep infinity
"""


def _write_configs(workdir: Path, tokens: dict[str, str]) -> None:
    inner = f"https://{base.NODE_IP}:{INNER_API_PORT}"
    ca_file = workdir / "pki" / "ca.crt"
    for user in ("kubelet", "controller-manager", "scheduler"):
        pki.write_kubeconfig(workdir / f"{user}.kubeconfig", inner, ca_file, tokens[user])
    (workdir / "cni").mkdir(exist_ok=True)
    bridge = {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": False,  # there is no iptables, and nowhere to masquerade to
        "hairpinMode": False,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": POD_SUBNET}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    conflist = {"cniVersion": "0.4.0", "name": "agentfarm", "plugins": [bridge]}
    (workdir / "cni" / "10-agentfarm.conflist").write_text(json.dumps(conflist, indent=2))
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    runtimes = f"{cri}.containerd.runtimes"
    (workdir / "containerd.toml").write_text(
        f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "{base.CONTAINERD_SOCKET}"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd-opt"
[{cri}]
  sandbox_image = "{base.PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE on the CI VMs: runc and crun fail on oom_score_adj without this.
  restrict_oom_score_adj = true
  disable_apparmor = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{runtimes}.runc]
  runtime_type = "io.containerd.runc.v2"
[{runtimes}.{base.RUNTIME_CLASS}]
  runtime_type = "io.containerd.runc.v2"
[{runtimes}.{base.RUNTIME_CLASS}.options]
  BinaryName = "{shutil.which("crun", path=PATH_ENV)}"
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{workdir / "cni"}"
"""
    )


def _write_kubelet_config(workdir: Path, cgroup_name: str) -> None:
    kubelet = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup_name}",
        "failSwapOn": False,
        "address": base.NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        # Reachable only inside the private network namespace, by the apiserver (logs, exec).
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "nodeStatusUpdateFrequency": "1s",
        "nodeStatusReportFrequency": "1s",
        "syncFrequency": "5s",
        # A test VM's disk and memory are whatever they are: never evict, never GC images.
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        # Small, so that a test can make the kubelet rotate a container's log (it checks
        # every 10 s): tests/k8s/test_backend_node.py reads a log across rotations.
        "containerLogMaxSize": "1Mi",
        "containerLogMaxFiles": 2,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "makeIPTablesUtilChains": False,
        "resolvConf": "",
        "serializeImagePulls": False,
        "clusterDomain": "cluster.local",
        "maxPods": 50,
    }
    (workdir / "kubelet.yaml").write_text(json.dumps(kubelet, indent=2))


# --- start --------------------------------------------------------------------------------------


def start(workdir: Path, *, tie_to_parent: bool = True, timeout: float = 90) -> base.Cluster:
    """Start tier B in ``workdir``; raises ClusterError (after cleaning up) when it cannot."""
    if os.geteuid() != 0:
        raise ClusterError("tier B (a full node) needs root")
    if missing := base.missing_binaries() + missing_tools():
        raise ClusterError(f"missing: {', '.join(missing)}")
    workdir = workdir.resolve()
    for hidden in ("/run", "/var/run", "/var/lib", "/var/log"):
        if workdir.is_relative_to(hidden):
            raise ClusterError(f"{workdir} is under {hidden}, which the node namespace hides")
    images = base_images()
    _remove_stale_cgroups()
    return base.with_port_retries(lambda: _start(workdir, images, tie_to_parent, timeout), workdir)


def _start(
    workdir: Path, images: Sequence[Path], tie_to_parent: bool, timeout: float
) -> base.Cluster:
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    pki.make_pki(workdir / "pki", ["127.0.0.1", base.NODE_IP, base.SERVICE_IP])
    users = ("admin", "kubelet", "controller-manager", "scheduler")
    tokens = {user: secrets.token_hex(24) for user in users}
    base.write_tokens(workdir, [
        f'{tokens["admin"]},admin,admin,"system:masters"',
        f'{tokens["kubelet"]},system:node:{base.NODE_NAME},kubelet,"system:nodes"',
        # The controllers and the scheduler need broad rights; a test cluster keeps it simple.
        f'{tokens["controller-manager"]},system:kube-controller-manager,kcm,"system:masters"',
        f'{tokens["scheduler"]},system:kube-scheduler,scheduler,"system:masters"',
    ])  # fmt: skip
    _write_configs(workdir, tokens)
    port = processes.free_port()
    server = f"https://127.0.0.1:{port}"
    ca_file = workdir / "pki" / "ca.crt"
    kubeconfig = pki.write_kubeconfig(workdir / "kubeconfig", server, ca_file, tokens["admin"])
    cluster = base.Cluster(
        "node", workdir, server, tokens["admin"], ca_file, kubeconfig,
        node_name=base.NODE_NAME, runtime_class=base.RUNTIME_CLASS,
        busybox_image=base.BUSYBOX_IMAGE, pause_image=base.PAUSE_IMAGE,
    )  # fmt: skip
    try:
        _start_daemons(cluster, port, images, tie_to_parent, timeout)
    except BaseException:
        base.stop(cluster)
        raise
    cluster.started_in_s = round(time.monotonic() - started, 2)
    cluster.save()
    return cluster


def _start_daemons(
    cluster: base.Cluster, port: int, images: Sequence[Path], tie_to_parent: bool, timeout: float
) -> None:
    workdir = cluster.workdir
    nsroot = workdir / "nsroot"
    logs = {name: workdir / "logs" / f"{name}.log" for name in ("namespace", *DAEMONS)}
    setup = NAMESPACE_SETUP.format(bridge=NODE_BRIDGE, ip=base.NODE_IP)
    holder = processes.spawn(
        ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
         "--propagation", "private", "--", "sh", "-c", setup, "setup", str(nsroot)],
        logs["namespace"], cwd=workdir, tie_to_parent=tie_to_parent,
    )  # fmt: skip
    cluster.holder_pid = holder.pid
    cluster.procs["namespace"] = holder
    cluster.save()
    processes.wait_until(
        "the node namespaces",
        lambda: (nsroot / ".namespace-ready").exists() and processes.children(holder.pid),
        15,
        logs,
        {"namespace": holder.pid},
    )
    cluster.ns_pid = processes.children(holder.pid)[0]
    # Named after the holder, which lives exactly as long as the node: a later start removes
    # the groups of a node whose holder is gone (its test process was killed mid-session).
    cluster.cgroup_name = f"{CGROUP_PREFIX}{holder.pid}"
    cluster.save()
    _create_cgroups(cluster.cgroup_name)
    _write_kubelet_config(workdir, cluster.cgroup_name)

    def inside(name: str, argv: Sequence[str]) -> None:
        enter = ["nsenter", "--target", str(cluster.ns_pid), "--mount", "--net", "--pid", "--"]
        proc = processes.spawn([*enter, *argv], logs[name], cwd=workdir, tie_to_parent=False)
        cluster.track(name, proc)
        deadline = time.monotonic() + 10
        while not (kids := processes.children(proc.pid)):
            processes.reap(proc.pid)
            if not processes.alive(proc.pid) or time.monotonic() > deadline:
                raise ClusterError(f"{name} did not start: {processes.tail(logs[name])}")
            time.sleep(0.01)
        # nsenter forks and forwards no signal: track the daemon itself for an orderly stop.
        cluster.track(name, proc, pid=kids[0])

    def daemons() -> dict[str, int]:
        return {name: cluster.pids[name] for name in DAEMONS if name in cluster.pids}

    etcd_url = "http://127.0.0.1:2379"
    inside("etcd", base.etcd_argv(nsroot / "etcd", etcd_url, "http://127.0.0.1:2380"))
    inside("containerd", ["containerd", "--config", str(workdir / "containerd.toml")])
    sock = workdir / "apiserver.sock"
    if len(str(sock)) > 100:  # a unix socket path has at most 107 bytes
        sock = Path(tempfile.mkdtemp(prefix="agentfarm-k8s-")) / "apiserver.sock"
    inside("socat-inner", ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600",
                           f"TCP:{base.NODE_IP}:{INNER_API_PORT}"])  # fmt: skip
    outer = processes.spawn(
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{sock}"],
        logs["socat-outer"], cwd=workdir, tie_to_parent=tie_to_parent,
    )  # fmt: skip
    cluster.track("socat-outer", outer)

    def etcd_healthy() -> bool:
        request = b"GET /health HTTP/1.0\r\n\r\n"
        answer = cluster.in_namespace("socat", "-T2", "-", "TCP:127.0.0.1:2379", input=request)
        return '"health":"true"' in answer

    processes.wait_until("etcd", etcd_healthy, 20, logs, daemons())
    extra = [
        "--bind-address=0.0.0.0",  # inside the private network namespace
        f"--advertise-address={base.NODE_IP}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--kubelet-preferred-address-types=InternalIP",
    ]
    inside("kube-apiserver", base.apiserver_argv(workdir, etcd_url, INNER_API_PORT, extra))
    kube = base.bin_dir()
    inside("kube-controller-manager", [
        str(kube / "kube-controller-manager"),
        f"--kubeconfig={workdir / 'controller-manager.kubeconfig'}",
        f"--service-account-private-key-file={workdir / 'pki' / 'sa.key'}",
        f"--root-ca-file={cluster.ca_file}", f"--service-cluster-ip-range={base.SERVICE_RANGE}",
        "--leader-elect=false", "--port=0", "--bind-address=127.0.0.1", "--v=1",
    ])  # fmt: skip
    inside("kube-scheduler", [
        str(kube / "kube-scheduler"), f"--kubeconfig={workdir / 'scheduler.kubeconfig'}",
        "--leader-elect=false", "--port=0", "--bind-address=127.0.0.1", "--v=1",
    ])  # fmt: skip
    # While the apiserver comes up: the images, then the kubelet (it retries registering).
    for image in images:
        cluster.import_image(image)
    inside("kubelet", [
        str(kube / "kubelet"),
        f"--config={workdir / 'kubelet.yaml'}", f"--kubeconfig={workdir / 'kubelet.kubeconfig'}",
        "--container-runtime=remote", f"--container-runtime-endpoint=unix://{base.CONTAINERD_SOCKET}",
        f"--hostname-override={base.NODE_NAME}", f"--node-ip={base.NODE_IP}",
        "--root-dir=/var/lib/kubelet", f"--cert-dir={workdir / 'kubelet-pki'}",
        f"--pod-infra-container-image={base.PAUSE_IMAGE}", "--v=1",
    ])  # fmt: skip
    processes.wait_until(
        "kube-apiserver /readyz",
        lambda: base.readyz(cluster.server, cluster.admin_token, cluster.ca_file),
        timeout,
        logs,
        daemons(),
    )
    runtime_class = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": base.RUNTIME_CLASS},
        "handler": base.RUNTIME_CLASS,
    }
    cluster.ensure("/apis/node.k8s.io/v1/runtimeclasses", runtime_class)

    def node_ready() -> bool:
        status, node = cluster.request("GET", f"/api/v1/nodes/{base.NODE_NAME}")
        conditions = node.get("status", {}).get("conditions", []) if status == 200 else []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    processes.wait_until(f"node {base.NODE_NAME} Ready", node_ready, timeout, logs, daemons())
