#!/usr/bin/env bash
# Build and install the executor's C programs (executor/native/Makefile): the sandbox helper and
# the restore self-test's probe server, with a build-id file naming the sources they came from.
# The executor finds them at their installed paths (INITLESS_SANDBOX_HELPER=auto), so nothing at
# run time needs a compiler or the C sources. Called by scripts/provision.sh and the image build.
#
# Usage: scripts/build-native.sh [--prefix DIR]     (default /usr/local/lib/initless)
# Does nothing when DIR already holds a build of these sources (same build id).
set -Eeuo pipefail

prefix=/usr/local/lib/initless
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "build-native: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../executor/native" && pwd)
want=$(cd "$src" && cat sandbox-helper.c probe-server.c | sha256sum | cut -c1-12)
if [ "$(cat "$prefix/build-id" 2>/dev/null)" = "$want" ] &&
  [ -x "$prefix/initless-sandbox-helper" ] && [ -x "$prefix/initless-probe-server" ]; then
  echo "build-native: $prefix has build $want already"
  exit 0
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
make -s -C "$src" install OUT="$out" DESTDIR="$prefix"
echo "build-native: installed build $(cat "$prefix/build-id") in $prefix"
