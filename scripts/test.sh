#!/usr/bin/env bash
# Run the whole test suite; CI and developers call the same thing (`make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTFARM_TOOLS=${AGENTFARM_TOOLS:-$PWD/.tools}
mkdir -p test-artifacts
exec .venv/bin/pytest "$@"
