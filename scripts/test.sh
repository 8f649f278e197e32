#!/usr/bin/env bash
# The test command: provisions what the tests need (idempotent), installs npm dependencies, builds
# dist/ (the integration tests start the gateway and the executor from it, as production does), then runs
# typecheck, lint, format check and the whole test suite (unit + integration against the real
# Redis, Docker engine, runc and CRIU). Usage: sudo bash scripts/test.sh [test-file-filter...]
set -Eeuo pipefail
cd "$(dirname "$0")/.."
bash scripts/provision.sh
. scripts/node-path.sh
bash scripts/npm-deps.sh
npm run --silent build
if [ "$#" -gt 0 ]; then
  exec node scripts/run-tests.mjs "$@"
fi
exec npm run --silent check
