#!/usr/bin/env bash
# Install the pinned Claude Code CLI from npm into the project-local prefix, when absent.
set -euo pipefail
version=${1:?usage: install-claude.sh VERSION}
prefix=${AGENTFARM_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/.tools}
bin="$prefix/node_modules/.bin/claude"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "^$version "; then
    exit 0
fi
"$(dirname "$0")/ensure-npm.sh"
echo "installing Claude Code CLI $version into $prefix (about 380 MB)..."
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$version" >/dev/null
pkg="$prefix/node_modules/@anthropic-ai/claude-code"
# The postinstall step links the native binary over bin/claude.exe; run it if npm skipped it.
if ! "$bin" --version >/dev/null 2>&1 && [ -f "$pkg/install.cjs" ]; then
    (cd "$pkg" && node install.cjs)
fi
if ! "$bin" --version 2>/dev/null | grep -q "^$version "; then
    echo "error: Claude Code CLI $version did not install correctly at $bin" >&2
    exit 1
fi
echo "Claude Code CLI $("$bin" --version)"
