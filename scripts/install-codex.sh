#!/usr/bin/env bash
# Install the pinned Codex CLI from npm into the project-local prefix, when absent.
set -euo pipefail
version=${1:?usage: install-codex.sh VERSION}
prefix=${AGENTFARM_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/.tools}
bin="$prefix/node_modules/.bin/codex"
# `codex --version` prints "codex-cli X.Y.Z".
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q " $version\$"; then
    exit 0
fi
"$(dirname "$0")/ensure-npm.sh"
echo "installing Codex CLI $version into $prefix (about 400 MB)..."
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "@openai/codex@$version" >/dev/null
if ! "$bin" --version 2>/dev/null | grep -q " $version\$"; then
    echo "error: Codex CLI $version did not install correctly at $bin" >&2
    exit 1
fi
echo "Codex CLI $("$bin" --version)"
