#!/usr/bin/env bash
# Build the Kubernetes test environment once, offline: install the Debian packages it needs, fetch
# Debian's `kubernetes` source package into an isolated apt state, build the control-plane binaries,
# kubelet and kubectl with Debian's Go in GOPATH mode, and keep only bin/ in the cache:
#   ${AGENTFARM_K8S_CACHE:-$HOME/.cache/agentfarm/k8s}/<version>/bin
# Idempotent: does nothing (but the package check) when the binaries are already cached.
# About 6.5 min and a 2.7 GB build tree (deleted afterwards) on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/k8s-testenv/versions.env
. "$here/versions.env"
cache=${AGENTFARM_K8S_CACHE:-$HOME/.cache/agentfarm/k8s}
root="$cache/$KUBE_VERSION"
bin="$root/bin"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
log() { printf '[k8s-testenv %(%H:%M:%S)T] %s\n' -1 "$*"; }

run_deps=(etcd-server containerd runc crun containernetworking-plugins busybox-static
    iproute2 openssl util-linux socat gcc libc6-dev)
build_deps=(golang-go make dpkg-dev rsync)

install_missing() {
    local need=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
    done
    [ ${#need[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "error: need root to install: ${need[*]}" >&2; exit 1; }
        sudo=sudo
    fi
    log "installing Debian packages: ${need[*]}"
    # Keep packaged daemons (etcd, containerd) from starting on the host: the tiers run their own.
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        created=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >/dev/null || { [ -n "$created" ] && $sudo rm -f "$policy"; exit 1; }
    [ -n "$created" ] && $sudo rm -f "$policy"
    return 0
}

have_binaries() {
    local b
    [ -f "$bin/.complete" ] || return 1
    for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done
}

install_missing "${run_deps[@]}"
if have_binaries; then
    log "Kubernetes $KUBE_VERSION binaries already in $bin"
    exit 0
fi

mkdir -p "$root"
exec 9>"$root/.build.lock"
if ! flock -n 9; then
    log "another build.sh is running; waiting for it"
    flock 9
    have_binaries && { log "binaries built by the other run: $bin"; exit 0; }
fi

install_missing "${build_deps[@]}"
start=$SECONDS
build="$root/build"
rm -rf "$build"
mkdir -p "$build/apt/lists/partial" "$build/apt/cache/archives/partial" "$build/src"
trap 'rm -rf "$build"' EXIT

# An isolated apt configuration: its own deb-src list, state and cache; the system setup is untouched.
cat >"$build/apt/sources.list" <<SOURCES
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
SOURCES
cat >"$build/apt/apt.conf" <<CONF
Dir::Etc::SourceList "$build/apt/sources.list";
Dir::Etc::SourceParts "$build/apt/sources.list.d";
Dir::State::Lists "$build/apt/lists";
Dir::Cache "$build/apt/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "root";
CONF
mkdir -p "$build/apt/sources.list.d"
export APT_CONFIG="$build/apt/apt.conf"
log "fetching Debian source package kubernetes=$KUBERNETES_DEB_VERSION"
apt-get update -qq
(cd "$build/src" && apt-get source -qq "kubernetes=$KUBERNETES_DEB_VERSION" >/dev/null)
unset APT_CONFIG
tree=$(find "$build/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[ -d "$tree/vendor" ] || { echo "error: no vendor/ in $tree" >&2; exit 1; }
log "source unpacked in $tree ($((SECONDS - start)) s)"

# GOPATH mode, no module downloads, all caches inside the build tree.
export GOPATH="$build/go" GOCACHE="$build/gocache" GOPROXY=off GOFLAGS='' GO111MODULE=off
export CGO_ENABLED=0 GOTOOLCHAIN=local
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
cat >"$build/version.env" <<VERSION
KUBE_GIT_VERSION='$KUBE_VERSION'
KUBE_GIT_MAJOR='${KUBE_VERSION#v}'
KUBE_GIT_MINOR='$(echo "$KUBE_VERSION" | cut -d. -f2)'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_COMMIT='$KUBE_GIT_COMMIT'
VERSION
sed -i "s/^KUBE_GIT_MAJOR=.*/KUBE_GIT_MAJOR='$(echo "${KUBE_VERSION#v}" | cut -d. -f1)'/" "$build/version.env"
export KUBE_GIT_VERSION_FILE="$build/version.env"
cd "$GOPATH/src/k8s.io/kubernetes"
log "building kube-apiserver (about 5 min on 2 cores)"
make WHAT=cmd/kube-apiserver >"$build/make-apiserver.log" 2>&1 || { tail -n 40 "$build/make-apiserver.log" >&2; exit 1; }
log "building kube-controller-manager kube-scheduler kubelet kubectl ($((SECONDS - start)) s so far)"
make WHAT="cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kubectl" \
    >"$build/make-rest.log" 2>&1 || { tail -n 40 "$build/make-rest.log" >&2; exit 1; }
out="$tree/_output/local/bin/linux/amd64"
rm -rf "$bin.tmp"
mkdir -p "$bin.tmp"
for b in "${binaries[@]}"; do
    [ -x "$out/$b" ] || { echo "error: $b was not built (looked in $out)" >&2; exit 1; }
    cp "$out/$b" "$bin.tmp/$b"
done
touch "$bin.tmp/.complete"
rm -rf "$bin"
mv "$bin.tmp" "$bin"
log "built ${binaries[*]} into $bin in $((SECONDS - start)) s; removing the build tree"
