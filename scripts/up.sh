#!/usr/bin/env bash
# The product command: provisions the host when needed, installs npm dependencies, builds dist/,
# then runs `initless up` (build, bake and serve the sample functions). Ctrl-C stops everything cleanly.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
bash scripts/provision.sh
. scripts/node-path.sh
bash scripts/npm-deps.sh
npm run --silent build
exec node bin/initless.mjs up "$@"
