#!/usr/bin/env python3
"""Assemble a container image as a docker-archive tarball from local files, with no registry.

The tarball is what `docker save` writes (manifest.json, an image config, one uncompressed
layer.tar per layer) and what `ctr -n k8s.io images import` and `docker load` read. The output
is reproducible: entries are sorted, times fixed (SOURCE_DATE_EPOCH or 0), owners root unless
told otherwise.

Usage:
    build-image.py --tag NAME:TAG --output IMAGE.tar [options] [ROOTFS_DIR ...]

Layers, bottom to top:
    ROOTFS_DIR ...          each directory becomes one layer; its contents land at /.
    --add SRC:DEST          copy a host file or directory to DEST in the image (repeatable).
    --add-binary PATH       copy a host executable and the shared libraries `ldd` lists for it
                            (and the dynamic loader) to the same paths (repeatable).
    --symlink LINK:TARGET   create a symbolic link LINK pointing at TARGET (repeatable).
    --mkdir PATH[:MODE]     create an empty directory, MODE octal, default 755 (repeatable).
    --resolve-libs          also add the shared libraries (per `ldd`, at their host paths) that
                            ELF files brought in by --add need, e.g. the libffi of Python's
                            lib-dynload/_ctypes when --add copies /usr/lib/python3.11.
    The --add, --add-binary, --symlink and --mkdir items form one extra top layer.

Ownership:
    By default every entry is owned by 0:0. --keep-owner keeps the source files' uid/gid;
    --chown PATH=UID:GID sets the owner of PATH and everything below it (repeatable).

Image config:
    --entrypoint JSON_OR_WORD   e.g. '["/usr/local/bin/entrypoint"]' or /bin/sh
    --cmd JSON_OR_WORD          default arguments
    --env KEY=VALUE             (repeatable; PATH defaults to the usual one)
    --workdir DIR  --user UID[:GID]  --label KEY=VALUE (repeatable)

Example, the busybox image of the test environment:
    mkdir -p rootfs/bin && cp /bin/busybox rootfs/bin/
    build-image.py --tag agentfarm.local/busybox:1.35 --output busybox.tar \\
        --cmd '["sh"]' rootfs
Import it into the tier-B node of the tests with `k8s_node.import_image(path)`, or by hand:
    ctr -n k8s.io --address /run/containerd/containerd.sock images import busybox.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Item:
    """One entry of the extra top layer."""

    kind: str  # "copy" | "binary" | "symlink" | "dir"
    dest: str
    source: Path | None = None
    target: str = ""
    mode: int = 0o755


@dataclass
class Options:
    tag: str
    output: Path
    rootfs: list[Path]
    items: list[Item] = field(default_factory=list)
    keep_owner: bool = False
    resolve_libs: bool = False
    chown: list[tuple[str, int, int]] = field(default_factory=list)
    config: dict[str, object] = field(default_factory=dict)
    mtime: int = 0


def _image_path(path: str) -> str:
    """Normalise to a relative archive name ("usr/bin/x"); "" is the root."""
    pure = PurePosixPath("/", path)
    parts = [p for p in pure.parts[1:] if p not in ("", ".")]
    if ".." in parts:
        raise SystemExit(f"error: '..' is not allowed in image paths: {path}")
    return "/".join(parts)


class LayerWriter:
    """Writes one layer.tar deterministically, creating parent directories as needed."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.buffer = tempfile.TemporaryFile()  # noqa: SIM115 (closed after the archive is written)
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.written: set[str] = set()
        self.inodes: dict[tuple[int, int], str] = {}
        self.links: dict[str, str] = {}
        self.elf_files: list[Path] = []

    def _resolve(self, name: str) -> str:
        """Rewrite parent components that are symlinks written earlier (``bin`` -> ``usr/bin``
        on merged-/usr hosts), so no entry lies below a symlink."""
        parts = name.split("/")
        resolved: list[str] = []
        for part in parts[:-1]:
            target = self.links.get("/".join([*resolved, part]))
            if target is None:
                resolved.append(part)
            else:
                base = target if target.startswith("/") else "/".join(["", *resolved, target])
                resolved = [p for p in _image_path(os.path.normpath(base)).split("/") if p]
        return "/".join([*resolved, parts[-1]])

    def _owner(self, name: str, info: tarfile.TarInfo, stat: os.stat_result | None) -> None:
        uid, gid = (stat.st_uid, stat.st_gid) if (stat and self.options.keep_owner) else (0, 0)
        for prefix, cuid, cgid in self.options.chown:
            if name == prefix or name.startswith(prefix + "/") or prefix == "":
                uid, gid = cuid, cgid
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self.written:
                self.directory(parent, 0o755, None)

    def directory(self, name: str, mode: int, stat: os.stat_result | None) -> None:
        name = self._resolve(name)
        if name in self.written or name == "":
            return
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, self.options.mtime
        self._owner(name, info, stat)
        self.tar.addfile(info)
        self.written.add(name)

    def symlink(self, name: str, target: str, stat: os.stat_result | None = None) -> None:
        name = self._resolve(name)
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        info.mtime = self.options.mtime
        self._owner(name, info, stat)
        self.tar.addfile(info)
        self.written.add(name)
        self.links[name] = target

    def file(self, name: str, source: Path, stat: os.stat_result) -> None:
        name = self._resolve(name)
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.mode, info.mtime = stat.st_mode & 0o7777, self.options.mtime
        self._owner(name, info, stat)
        key = (stat.st_dev, stat.st_ino)
        if stat.st_nlink > 1 and key in self.inodes:
            info.type, info.linkname = tarfile.LNKTYPE, self.inodes[key]
            self.tar.addfile(info)
        else:
            info.size = stat.st_size
            with source.open("rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    self.elf_files.append(source)
                handle.seek(0)
                self.tar.addfile(info, handle)
            if stat.st_nlink > 1:
                self.inodes[key] = name
        self.written.add(name)

    def tree(self, source: Path, dest: str) -> None:
        """Add ``source`` (file, symlink or directory, recursively) at ``dest``."""
        stat = source.lstat()
        if source.is_symlink():
            self.symlink(dest, os.readlink(source), stat)
        elif source.is_dir():
            if dest:
                self.directory(dest, stat.st_mode & 0o7777, stat)
            for child in sorted(os.listdir(source)):
                self.tree(source / child, f"{dest}/{child}" if dest else child)
        elif source.is_file():
            self.file(dest, source, stat)
        else:
            print(f"warning: skipping special file {source}", file=sys.stderr)

    def finish(self) -> tuple[IO[bytes], str, int]:
        self.tar.close()
        self.buffer.seek(0)
        digest = hashlib.sha256()
        size = 0
        while chunk := self.buffer.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        self.buffer.seek(0)
        return self.buffer, digest.hexdigest(), size


def _shared_libraries(binary: Path) -> list[Path]:
    """The libraries (and loader) ``ldd`` resolves for ``binary``; none for static ones."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return []
    found: list[Path] = []
    for line in result.stdout.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            found.append(Path(match.group(1)))
    return found


def _add_host_path(layer: LayerWriter, path: Path, depth: int = 0) -> None:
    """Add host ``path`` at the same place; symlinks on the way (``/lib`` -> ``usr/lib`` on
    merged-/usr systems) are added as symlinks and followed, so lower layers stay consistent."""
    if depth > 40:
        raise SystemExit(f"error: too many symlinks resolving {path}")
    current = Path("/")
    parts = Path(os.path.abspath(path)).parts[1:]
    for index, part in enumerate(parts):
        candidate = current / part
        if candidate.is_symlink():
            name = _image_path(str(candidate))
            target = os.readlink(candidate)
            if name not in layer.written:
                layer.symlink(name, target, candidate.lstat())
            resolved = Path(os.path.normpath(candidate.parent / target))
            _add_host_path(layer, resolved.joinpath(*parts[index + 1 :]), depth + 1)
            return
        current = candidate
    name = _image_path(str(current))
    if name not in layer.written:
        layer.tree(current, name)


def build(options: Options) -> str:
    """Write the docker-archive; returns the image id (the config digest)."""
    layers: list[tuple[IO[bytes], str, int]] = []
    for rootfs in options.rootfs:
        if not rootfs.is_dir():
            raise SystemExit(f"error: not a directory: {rootfs}")
        writer = LayerWriter(options)
        writer.tree(rootfs, "")
        layers.append(writer.finish())
    if options.items:
        writer = LayerWriter(options)
        for item in options.items:
            dest = _image_path(item.dest)
            if item.kind == "dir":
                writer.directory(dest, item.mode, None)
            elif item.kind == "symlink":
                writer.symlink(dest, item.target)
            elif item.kind == "binary" and item.source is not None:
                for path in [item.source, *_shared_libraries(item.source)]:
                    _add_host_path(writer, path)
            elif item.source is not None:
                if not item.source.exists():
                    raise SystemExit(f"error: no such file: {item.source}")
                writer.tree(item.source, dest)
        if options.resolve_libs:
            for elf in list(writer.elf_files):
                for library in _shared_libraries(elf):
                    _add_host_path(writer, library)
        layers.append(writer.finish())
    if not layers:
        raise SystemExit("error: an image needs at least one ROOTFS_DIR or --add/--add-binary item")

    diff_ids = [f"sha256:{digest}" for _, digest, _ in layers]
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": options.config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "build-image.py"}]
        * len(layers),
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    manifest = [
        {
            "Config": f"{config_digest}.json",
            "RepoTags": [options.tag],
            "Layers": [f"{digest}/layer.tar" for _, digest, _ in layers],
        }
    ]

    options.output.parent.mkdir(parents=True, exist_ok=True)
    partial = options.output.with_name(options.output.name + ".partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as out:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), options.mtime, 0o644
            out.addfile(info, io.BytesIO(data))

        add_bytes(f"{config_digest}.json", config_bytes)
        for buffer, digest, size in layers:
            info = tarfile.TarInfo(f"{digest}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, options.mtime
            out.addfile(info)
            info = tarfile.TarInfo(f"{digest}/layer.tar")
            info.size, info.mtime, info.mode = size, options.mtime, 0o644
            out.addfile(info, buffer)
            buffer.close()
        add_bytes("manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
        repo, _, tag = options.tag.rpartition(":")
        repositories = {repo: {tag: layers[-1][1]}} if repo and "/" not in tag else {}
        add_bytes("repositories", json.dumps(repositories).encode())
    partial.replace(options.output)
    return f"sha256:{config_digest}"


def _json_or_word(value: str) -> list[str]:
    if value.startswith("["):
        parsed = json.loads(value)
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise SystemExit(f"error: expected a JSON list of strings: {value}")
        return parsed
    return [value]


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for details.",
    )
    parser.add_argument("rootfs", nargs="*", type=Path, metavar="ROOTFS_DIR")
    parser.add_argument(
        "--tag", required=True, help="image reference, e.g. agentfarm.local/agent:1"
    )
    parser.add_argument("--output", "-o", required=True, type=Path)
    parser.add_argument("--add", action="append", default=[], metavar="SRC:DEST")
    parser.add_argument("--add-binary", action="append", default=[], metavar="PATH")
    parser.add_argument("--symlink", action="append", default=[], metavar="LINK:TARGET")
    parser.add_argument("--mkdir", action="append", default=[], metavar="PATH[:MODE]")
    parser.add_argument("--resolve-libs", action="store_true")
    parser.add_argument("--keep-owner", action="store_true")
    parser.add_argument("--chown", action="append", default=[], metavar="PATH=UID:GID")
    parser.add_argument("--entrypoint")
    parser.add_argument("--cmd")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir")
    parser.add_argument("--user")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    if ":" not in args.tag.rsplit("/", 1)[-1]:
        raise SystemExit(
            "error: --tag needs an explicit tag (NAME:TAG); ':latest' makes kubelet pull"
        )
    options = Options(
        tag=args.tag,
        output=args.output,
        rootfs=args.rootfs,
        keep_owner=args.keep_owner,
        resolve_libs=args.resolve_libs,
        mtime=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
    )
    for spec in args.add:
        src, sep, dest = spec.partition(":")
        if not sep or not dest:
            raise SystemExit(f"error: --add wants SRC:DEST, got {spec}")
        options.items.append(Item("copy", dest, source=Path(src)))
    for spec in args.add_binary:
        options.items.append(Item("binary", spec, source=Path(spec)))
    for spec in args.symlink:
        link, sep, target = spec.partition(":")
        if not sep:
            raise SystemExit(f"error: --symlink wants LINK:TARGET, got {spec}")
        options.items.append(Item("symlink", link, target=target))
    for spec in args.mkdir:
        path, _, mode = spec.partition(":")
        options.items.append(Item("dir", path, mode=int(mode or "755", 8)))
    for spec in args.chown:
        path, sep, owner = spec.partition("=")
        uid, _, gid = owner.partition(":")
        if not sep or not uid.isdigit() or not (gid or uid).isdigit():
            raise SystemExit(f"error: --chown wants PATH=UID:GID, got {spec}")
        options.chown.append((_image_path(path), int(uid), int(gid or uid)))

    env = dict(item.split("=", 1) for item in args.env)
    env.setdefault("PATH", DEFAULT_PATH)
    config: dict[str, object] = {"Env": [f"{k}={v}" for k, v in env.items()]}
    if args.entrypoint:
        config["Entrypoint"] = _json_or_word(args.entrypoint)
    if args.cmd:
        config["Cmd"] = _json_or_word(args.cmd)
    if args.workdir:
        config["WorkingDir"] = args.workdir
    if args.user:
        config["User"] = args.user
    if args.label:
        config["Labels"] = dict(item.split("=", 1) for item in args.label)
    options.config = config
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    image_id = build(options)
    print(f"{options.output}: {options.tag} {image_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
