#!/usr/bin/env bash
# Install npm dependencies exactly as locked, only when package-lock.json (or how they are installed)
# changed since last time.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
# --ignore-scripts: no dependency's install script runs. The only ones that build anything are
# ssh2's optional native crypto binding and cpu-features (dockerode's ssh transport, unused here;
# both fall back to JavaScript). Debian's npm compiles them with node-gyp against Debian's Node 18
# headers whatever Node runs it, and Node 20 then crashes loading them (SIGSEGV or a glibc malloc
# assertion as soon as dockerode is imported). npm 11 skips such scripts unless approved anyway.
NPM_CI=(npm ci --no-audit --no-fund --loglevel=error --ignore-scripts)
stamp=node_modules/.initless-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1) ${NPM_CI[*]}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "==> npm ci"
start=$(date +%s%3N)
"${NPM_CI[@]}"
echo "$want" >"$stamp"
echo "    ok ($(($(date +%s%3N) - start)) ms)"
