#!/usr/bin/env bash
# The cockpit's third-party browser assets (htmx and its SSE extension), fetched from the npm
# registry at build time, verified against scripts/web-vendor/package-lock.json, and copied into
# the package (src/agentfarm/web/static/vendor/, gitignored). Nothing is fetched at run time and
# a built install needs no node. `make install`, `make run` and `make test` call this.
set -euo pipefail
cd "$(dirname "$0")/.."
src=scripts/web-vendor
dest=src/agentfarm/web/static/vendor
stamp="$dest/.lock-sha256"
want=$(sha256sum "$src/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -f "$dest/htmx.min.js" ] && [ -f "$dest/htmx-ext-sse.min.js" ]; then
    exit 0
fi
scripts/ensure-npm.sh
cache=${AGENTFARM_CACHE:-$PWD/.cache}/web-vendor
mkdir -p "$cache" "$dest"
cp "$src/package.json" "$src/package-lock.json" "$cache/"
(cd "$cache" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
modules="$cache/node_modules"
cp "$modules/htmx.org/dist/htmx.min.js" "$dest/htmx.min.js"
cp "$modules/htmx-ext-sse/dist/sse.min.js" "$dest/htmx-ext-sse.min.js"
cp "$modules/htmx.org/LICENSE" "$dest/htmx.LICENSE" 2>/dev/null || true
echo "$want" > "$stamp"
echo "cockpit assets: htmx $(node -p "require('$modules/htmx.org/package.json').version" 2>/dev/null || echo '?') from npm -> $dest"
