#!/usr/bin/env bash
# Make sure npm is there (it fetches the pinned Claude Code CLI and the cockpit's htmx at build
# time); on a fresh Debian/Ubuntu, install it when we may.
set -euo pipefail
command -v npm >/dev/null && exit 0
sudo=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "error: npm is needed: run 'sudo apt-get install npm'" >&2; exit 1; }
    sudo=sudo
fi
command -v apt-get >/dev/null || { echo "error: npm is needed: install Node.js and npm" >&2; exit 1; }
echo "installing npm (used at build time only)..."
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq npm >/dev/null
