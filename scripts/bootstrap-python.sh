#!/usr/bin/env bash
# Create the project's virtualenv; on a fresh Debian/Ubuntu, install python3-venv first if needed.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
if ! command -v "$python" >/dev/null; then
    echo "error: $python not found; install Python >= 3.11 (apt-get install python3 python3-venv)" >&2
    exit 1
fi
"$python" - <<'PY' || { echo "error: agentfarm needs Python >= 3.11" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing python3-venv (needed to create the virtualenv)..."
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "error: cannot create a virtualenv; run: sudo apt-get install python3-venv" >&2
        exit 1
    fi
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
