"""The control-plane image, assembled from this machine's files the way
deploy/controlplane/Dockerfile builds it, for tests where no container engine runs.

What the Dockerfile does, and what stands in for it here:
- build context: a clean clone (``git ls-files``) filtered by ``.dockerignore`` (:func:`context`);
- stage ``web``: scripts/build-web-vendor.sh from the lock file; here its output in the tree, used
  only if its stamp matches the lock file, and only where the Dockerfile copies it
  (``COPY --from=web``);
- stage ``build``: ``pip install ".[kubernetes]"`` into the venv /opt/agentfarm. Offline there is
  no setuptools new enough to build the wheel, so the package's files are picked the way
  setuptools picks them from pyproject.toml (packages with ``__init__.py`` under ``src``, plus
  ``package-data`` globs), and its dependencies (the closure of ``agentfarm[kubernetes]``) are
  copied from this virtualenv;
- final stage: Debian's python3.11 and its standard library, git, the CA certificates, uid 1000,
  and the image config (ENV, USER, ENTRYPOINT, CMD) read from the Dockerfile's last stage.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import Requirement

from tests import realparts
from tests.k8s import cluster, test_manifests

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "controlplane" / "Dockerfile"
IMAGE = "agentfarm.local/agentfarm:test"
VENV = PurePosixPath("/opt/agentfarm")
SITE = VENV / "lib" / "python3.11" / "site-packages"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- .dockerignore ------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus ``**``) as a regular expression."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignore_rules(path: Path) -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, is_exception) in file order, as Docker reads a .dockerignore."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        cleaned = str(PurePosixPath("/", line.removeprefix("!").strip())).lstrip("/")
        rules.append((_pattern_regex(cleaned), negate))
    return rules


def ignored(rules: list[tuple[re.Pattern[str], bool]], name: str) -> bool:
    """Whether ``name`` (relative, posix) stays out of the context: the last rule that matches
    it or one of its parent directories decides."""
    parts = name.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for regex, negate in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negate
    return result


def context(files: list[str]) -> list[str]:
    """The build context a ``docker build .`` sends for these repository files."""
    rules = ignore_rules(REPO / ".dockerignore")
    return [name for name in files if not ignored(rules, name)]


def clean_clone_files() -> list[str]:
    """What a fresh clone of this commit holds (tracked files, as in the work tree)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (REPO / name).exists())


def tree_files() -> list[str]:
    """Every file in the developer's tree, ignored ones included (.venv, .tools, ...)."""
    return sorted(
        str(path.relative_to(REPO))
        for path in REPO.rglob("*")
        if path.is_file() and not path.is_symlink()
    )


# --- the Dockerfile -----------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def stages(dockerfile: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile's stages with their instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            base, _, alias = rest.partition(" AS ")
            found.append(Stage(alias.strip() or str(len(found)), base.strip()))
        elif found:
            found[-1].instructions.append((word, rest.strip()))
    return found


def copy_sources(dockerfile: Path) -> list[str]:
    """The context paths every ``COPY`` without ``--from`` reads."""
    sources = []
    for stage in stages(dockerfile):
        for word, rest in stage.instructions:
            if word == "COPY" and "--from=" not in rest:
                args = [a for a in rest.split() if not a.startswith("--")]
                sources += args[:-1]
    return sources


def _env(rest: str) -> dict[str, str]:
    pairs = re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", rest)
    return {key: value.strip('"') for key, value in pairs}


def image_config() -> list[str]:
    """The final stage's config as build-image.py options."""
    options: list[str] = []
    env: dict[str, str] = {}
    for word, rest in stages()[-1].instructions:
        if word == "ENV":
            for key, value in _env(rest).items():
                env[key] = value.replace("$PATH", env.get("PATH", DEFAULT_PATH))
        elif word == "USER":
            options += ["--user", rest]
        elif word in ("ENTRYPOINT", "CMD"):
            options += [f"--{word.lower()}", json.dumps(json.loads(rest))]
        elif word == "WORKDIR":
            options += ["--workdir", rest]
    for key, value in env.items():
        options += ["--env", f"{key}={value}"]
    return options


# --- the package, as setuptools would install it -------------------------------------------------


def vendor_dir() -> Path:
    """The cockpit assets scripts/build-web-vendor.sh wrote into the tree, if current."""
    vendor = REPO / "src" / "agentfarm" / "web" / "static" / "vendor"
    lock = REPO / "scripts" / "web-vendor" / "package-lock.json"
    stamp = vendor / ".lock-sha256"
    want = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not (vendor / "htmx.min.js").is_file() or not stamp.is_file():
        realparts.missing("the cockpit's web assets", "run make web-vendor")
    if stamp.read_text().strip() != want:
        realparts.missing("current cockpit web assets", "run make web-vendor (lock file changed)")
    return vendor


def package_files(source: Path) -> list[str]:
    """What ``pip install`` puts into site-packages from the tree at ``source`` (relative
    paths): every module of every package setuptools finds, plus the package-data globs."""
    project = tomllib.loads((source / "pyproject.toml").read_text())
    tool = project["tool"]["setuptools"]
    where = source / tool["packages"]["find"]["where"][0]
    found: set[str] = set()
    for init in where.rglob("__init__.py"):
        package = init.parent
        chain = package.relative_to(where).parents
        if all((where / parent / "__init__.py").exists() for parent in chain if str(parent) != "."):
            found.update(str(p.relative_to(where)) for p in package.glob("*.py"))
    for package, patterns in tool.get("package-data", {}).items():
        root = where / package.replace(".", "/")
        for pattern in patterns:
            for path in root.glob(pattern):
                if path.is_file() and not fnmatch.fnmatch(path.name, ".*"):
                    found.add(str(path.relative_to(where)))
    return sorted(found)


def dependency_dists(
    requirement: str = "agentfarm[kubernetes]",
) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``pip install requirement`` needs, agentfarm excluded."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, tuple[str, ...]]] = set()
    todo = [Requirement(requirement)]
    while todo:
        req = todo.pop()
        dist = importlib.metadata.distribution(req.name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if (key, tuple(sorted(req.extras))) in done:
            continue
        done.add((key, tuple(sorted(req.extras))))
        seen[key] = dist
        environments = [{"extra": extra} for extra in ["", *sorted(req.extras)]]
        for wanted in dist.requires or []:
            sub = Requirement(wanted)
            if sub.marker is None or any(sub.marker.evaluate(e) for e in environments):
                sub.marker = None
                todo.append(sub)
    seen.pop("agentfarm", None)
    return list(seen.values())


def _copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, dest, follow_symlinks=True)


def assemble_venv(work: Path) -> Path:
    """/opt/agentfarm as the build stage leaves it, under ``work/opt``; returns that dir."""
    build = next(s for s in stages() if s.name == "build")
    context_dir = work / "context"
    for name in context(clean_clone_files()):
        _copy(REPO / name, context_dir / name)
    for word, rest in build.instructions:  # COPY --from=web SRC DEST: the web stage's output
        if word == "COPY" and rest.startswith("--from=web"):
            dest = rest.split()[-1]
            shutil.copytree(vendor_dir(), context_dir / dest, dirs_exist_ok=True)
    venv = work / "opt" / "agentfarm"
    site = venv / SITE.relative_to(VENV)
    for name in package_files(context_dir):
        _copy(context_dir / "src" / name, site / name)
    ours = Path(sysconfig.get_paths()["purelib"])
    for dist in dependency_dists():
        for file in dist.files or []:
            located = Path(os.path.normpath(dist.locate_file(file)))  # type: ignore[arg-type]
            if located.is_relative_to(ours) and "__pycache__" not in file.parts:
                _copy(located, site / located.relative_to(ours))
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/usr/bin/python3.11")
    (venv / "bin" / "python3").symlink_to("python")
    (venv / "pyvenv.cfg").write_text(
        "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n"
    )
    project = tomllib.loads((context_dir / "pyproject.toml").read_text())["project"]
    for script, target in project["scripts"].items():
        module, _, function = target.partition(":")
        path = venv / "bin" / script
        path.write_text(
            f"#!{VENV}/bin/python\nimport sys\nfrom {module} import {function}\n"
            f"sys.exit({function}())\n"
        )
        path.chmod(0o755)
    return venv


def build_controlplane_image(work: Path) -> Path:
    """The docker-archive of the control-plane image, tagged :data:`IMAGE`."""
    venv = assemble_venv(work)
    passwd = work / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\nagentfarm:x:1000:1000::/data:/bin/false\n")
    group = work / "group"
    group.write_text("root:x:0:\nagentfarm:x:1000:\n")
    tarball = work / "controlplane.tar"
    argv = [sys.executable, str(REPO / "scripts/k8s-testenv/build-image.py"),
            "--tag", IMAGE, "--output", str(tarball),
            "--add-binary", "/usr/bin/python3.11",
            "--add", "/usr/lib/python3.11:/usr/lib/python3.11",
            "--add-binary", "/usr/bin/git", "--add", "/usr/lib/git-core:/usr/lib/git-core",
            "--add", "/usr/share/ca-certificates:/usr/share/ca-certificates",
            "--add", "/etc/ssl/certs:/etc/ssl/certs",
            "--add", f"{venv}:{VENV}",
            "--add", f"{passwd}:/etc/passwd", "--add", f"{group}:/etc/group",
            "--mkdir", "/tmp:1777", "--mkdir", "/data:755", "--chown", "/data=1000:1000",
            "--resolve-libs", *image_config()]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"build-image.py failed: {result.stderr.strip()}")
    return tarball


# --- running it on the tier-B node, as the kit's Deployment would ---------------------------------


def kit_pod(namespace: str) -> dict[str, Any]:
    """The kit's control-plane Deployment as one pod of :data:`IMAGE`: the data volume is an
    emptyDir, and the pod needs no ServiceAccount (it talks to no API server here)."""
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in test_manifests.all_documents()}
    template = copy.deepcopy(docs[("Deployment", "agentfarm")]["spec"]["template"])
    spec = template["spec"]
    spec.pop("serviceAccountName")
    spec["automountServiceAccountToken"] = False
    spec["restartPolicy"] = "Never"  # a crash fails the test at once
    spec["volumes"] = [{"name": v["name"], "emptyDir": {}} for v in spec["volumes"]]
    container = spec["containers"][0]
    container["image"] = IMAGE
    container["livenessProbe"]["initialDelaySeconds"] = 60
    container["readinessProbe"]["periodSeconds"] = 1
    labels = template["metadata"]["labels"]
    metadata = {"name": "agentfarm", "namespace": namespace, "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def http_get(
    node: cluster.Cluster, address: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """GET over plain TCP from inside the node's network namespace (where pod IPs route)."""
    lines = [f"GET {path} HTTP/1.0", "Host: localhost:8080"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    # shut-none: a half-closed request makes the server drop the connection unanswered.
    target = f"TCP:{address}:8080,shut-none"
    answer = node.in_namespace("socat", "-t10", "-T10", "-", target, input=request)
    head, _, body = answer.partition("\r\n\r\n")
    if not head.startswith("HTTP/"):
        return 0, f"no HTTP answer from {address}: {answer!r}"
    return int(head.split()[1]), body


def _wait_ready(node: cluster.Cluster, namespace: str, name: str, timeout: float = 180) -> str:
    """The pod's IP once its readiness probe (GET /api/health) passes."""
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    deadline = time.monotonic() + timeout
    while True:
        status, pod = node.request("GET", path)
        if status != 200:
            raise AssertionError(f"GET {path} -> {status}: {pod}")
        conditions = pod.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return str(pod["status"]["podIP"])
        statuses = pod.get("status", {}).get("containerStatuses", [])
        if any(s.get("state", {}).get("terminated") for s in statuses) or (
            time.monotonic() > deadline
        ):
            log = node.kubectl("-n", namespace, "logs", name, check=False)
            raise AssertionError(f"{name} not ready: {statuses}\n{log}")
        time.sleep(0.5)


@dataclass
class ControlPlane:
    namespace: str
    address: str
    image_seconds: float
    image_mib: int
    ready_seconds: float


@contextlib.contextmanager
def control_plane(node: cluster.Cluster, work: Path) -> Iterator[ControlPlane]:
    """Build and import the image, run it as the kit's pod in a namespace of its own and wait
    until the kubelet finds it ready; on exit delete the namespace (without waiting)."""
    started = time.monotonic()
    tarball = build_controlplane_image(work)
    node.import_image(tarball)
    seconds = time.monotonic() - started
    namespace = node.create_namespace("controlplane")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "agentfarm-api", "namespace": namespace},
        "stringData": {"token": "af_" + "0" * 48},
    }
    try:
        for kind, body in (("secrets", secret), ("pods", kit_pod(namespace))):
            status, answer = node.request("POST", f"/api/v1/namespaces/{namespace}/{kind}", body)
            if status != 201:
                raise AssertionError(f"creating {kind} -> {status}: {answer}")
        created = time.monotonic()
        address = _wait_ready(node, namespace, "agentfarm")
        ready = time.monotonic() - created
        yield ControlPlane(namespace, address, seconds, tarball.stat().st_size >> 20, ready)
    finally:
        # Not forced: the object goes once the kubelet has stopped the container, so nothing is
        # left running when the node is torn down.
        node.kubectl("-n", namespace, "delete", "pods", "--all", "--grace-period=1",
                     "--timeout=60s", check=False)  # fmt: skip
        node.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
