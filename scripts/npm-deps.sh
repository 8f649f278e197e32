#!/usr/bin/env bash
# Install npm dependencies exactly as locked, only when package-lock.json changed since last time.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
stamp=node_modules/.initless-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "==> npm ci"
start=$(date +%s%3N)
npm ci --no-audit --no-fund --loglevel=error
echo "$want" >"$stamp"
echo "    ok ($(($(date +%s%3N) - start)) ms)"
