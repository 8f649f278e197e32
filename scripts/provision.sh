#!/usr/bin/env bash
# Provision a Debian 12 host for initless: Node.js >= 20 (when the host has none), Docker engine
# (experimental), runc, CRIU 4.2.1 built from Debian's source tarball, Redis (two: the registry's and
# the queues'), an OCI registry
# (Debian's docker-registry), and the locally built Debian base image. Idempotent: every step checks first and does nothing when its result is already
# there.
#
# Usage: sudo scripts/provision.sh [--no-base-image]
# Environment (all optional):
#   INITLESS_STATE_DIR      where initless keeps its data          (default /var/lib/initless)
#   INITLESS_LOG_DIR        logs of the daemons started here        (default /var/log/initless)
#   INITLESS_BASE_IMAGE     tag of the local Debian base image      (default initless/debian:bookworm)
#   INITLESS_REDIS_PORT     port of the Redis started here          (default 6379)
#   INITLESS_ASYNC_REDIS_PORT  port of the queue Redis started here (default 6381): the Redis of
#                           the asynchronous invocation queues, appendfsync always; `initless up`,
#                           `initless service install` and `initless doctor` use it by default
#   INITLESS_REGISTRY_ADDRESS  address of the OCI registry started here (default 127.0.0.1:5000);
#                           hosts share images through it with INITLESS_IMAGE_REGISTRY
#   INITLESS_SKIP_APT_UPDATE=1  never run apt-get update (offline re-runs)
#   INITLESS_KERNEL_TUNING=0    leave the kernel's settings alone (scripts/host-tuning.sh says
#                           what would be set and why)
set -Eeuo pipefail

STATE_DIR=${INITLESS_STATE_DIR:-/var/lib/initless}
LOG_DIR=${INITLESS_LOG_DIR:-/var/log/initless}
BASE_IMAGE=${INITLESS_BASE_IMAGE:-initless/debian:bookworm}
REDIS_PORT=${INITLESS_REDIS_PORT:-6379}
QUEUE_REDIS_PORT=${INITLESS_ASYNC_REDIS_PORT:-6381}
REGISTRY_ADDRESS=${INITLESS_REGISTRY_ADDRESS:-127.0.0.1:5000}
# The package's storage dir, owned by its docker-registry user.
REGISTRY_DATA=/var/lib/docker-registry
REGISTRY_CONFIG=/etc/initless/registry.yml
BUILD_BASE_IMAGE=1
for arg in "$@"; do
  case "$arg" in
    --no-base-image) BUILD_BASE_IMAGE=0 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "provision: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# CRIU: Debian bookworm's 3.17 fails on current kernels, 4.1 cannot dump TCP sockets on >= 6.16.
# 4.2.1's upstream tarball is served by Debian's archive for sid; pin it by checksum.
CRIU_VERSION=4.2.1
CRIU_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
# Build flavour, part of the install path: a change here rebuilds CRIU on every host. "lean": no
# GnuTLS (TLS page server) and no nftables (network lock; initless dumps with `network-lock skip`),
# two library sets fewer to load at every CRIU start: `criu --version` 12.7 -> 6.0 ms here, paid
# by every restore and lazy-pages daemon.
CRIU_BUILD=lean
CRIU_PREFIX=/usr/local/lib/initless/criu-$CRIU_VERSION-$CRIU_BUILD
# /usr/local/sbin precedes /usr/sbin in root's PATH, so runc (which looks criu up in PATH) finds it.
CRIU_BIN=/usr/local/sbin/criu

# Node.js for hosts without a Node >= 20 (Debian 12's nodejs is 18): the npm registry's `node`
# package, which installs the official Linux build (node-linux-<arch>) of this version.
NODE_VERSION=20.20.2
# Its `node` lands in $NODE_PREFIX/bin, ahead of Debian's /usr/bin/node in PATH (scripts/node-path.sh).
NODE_PREFIX=/usr/local

export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

APT_PACKAGES=(
  docker.io runc containerd redis-server debootstrap iproute2 iptables kmod ca-certificates curl xz-utils
  nginx-light docker-compose
  # the OCI registry several hosts share function images through
  docker-registry
  # systemd-analyze: the tests verify the service units with systemd's own parser
  systemd
  # pgrep/pkill below (restarting dockerd); not in a minimal Debian
  procps
  # CRIU build dependencies
  build-essential pkg-config libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
  python3-protobuf libnl-3-dev libnet1-dev libcap-dev uuid-dev libbsd-dev libaio-dev
)
# Where the kernel has AppArmor on (Debian's stock kernel does), dockerd loads its docker-default
# profile with apparmor_parser and refuses to create any container without it ("AppArmor enabled
# on system but the docker-default profile could not be loaded"); docker.io only recommends the
# apparmor package, which --no-install-recommends leaves out.
if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]; then APT_PACKAGES+=(apparmor); fi

step_name=""
step_start=0
now_ms() { date +%s%3N; }
step() {
  step_name=$1
  step_start=$(now_ms)
  printf '==> %s\n' "$step_name"
}
done_step() {
  printf '    ok (%s ms)%s\n' "$(($(now_ms) - step_start))" "${1:+ — $1}"
}
fail() {
  printf '\nprovision: FAILED at step "%s"\n  what: %s\n  fix:  %s\n' "$step_name" "$1" "$2" >&2
  exit 1
}
trap 'fail "command failed (line $LINENO): $BASH_COMMAND" "read the output above; re-running this script is safe"' ERR

[ "$(id -u)" = 0 ] || { step "check user"; fail "must run as root" "run: sudo $0"; }
if ! grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
  echo "provision: warning: written for Debian 12 (bookworm); this is $(. /etc/os-release; echo "$PRETTY_NAME")" >&2
fi
mkdir -p "$STATE_DIR" "$LOG_DIR"
chmod 0700 "$STATE_DIR"

apt_updated=0
# apt_install PACKAGE...: installs those not installed yet (apt-get update first, once per run);
# sets `installed` to how many it installed.
apt_install() {
  local missing=() p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then missing+=("$p"); fi
  done
  installed=${#missing[@]}
  ((installed)) || return 0
  echo "    installing: ${missing[*]}"
  if [ "${INITLESS_SKIP_APT_UPDATE:-0}" != 1 ] && [ "$apt_updated" = 0 ]; then
    apt-get update -qq || echo "    warning: apt-get update reported errors; trying to install anyway"
    apt_updated=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 ||
    fail "apt-get install ${missing[*]} failed (log: $LOG_DIR/apt.log)" \
      "check that Debian's archive is reachable (apt-get update), then re-run"
}

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

step "Node.js"
if [ "$(node_major)" -ge 20 ]; then
  done_step "$(node --version) at $(command -v node)"
else
  echo "    found: $(node --version 2>/dev/null || echo none); installing Node.js $NODE_VERSION"
  apt_install nodejs npm ca-certificates
  # The official build trusts only the CAs compiled into it, where Debian's node uses the system's
  # store: npm keeps working behind a TLS-intercepting proxy the host trusts only when pointed at
  # the system bundle (the Dockerfile does the same). An npm CA set by the admin is left alone.
  if [ "$(npm config get cafile)" = null ] && [ "$(npm config get ca)" = null ]; then
    npm config set --location=global cafile /etc/ssl/certs/ca-certificates.crt
  fi
  npm install -g --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error "node@$NODE_VERSION" \
    >"$LOG_DIR/node-install.log" 2>&1 ||
    fail "npm install -g node@$NODE_VERSION failed (log: $LOG_DIR/node-install.log)" \
      "check that the npm registry is reachable (npm ping), then re-run"
  hash -r
  [ "$(node_major)" -ge 20 ] || fail "node in PATH is $(node --version 2>/dev/null || echo missing) after installing $NODE_VERSION into $NODE_PREFIX/bin" \
    "put $NODE_PREFIX/bin ahead of /usr/bin in PATH, or install Node.js 20 or newer yourself"
  done_step "installed $(node --version) at $(command -v node)"
fi

# ---------------------------------------------------------------------------------------------
step "apt packages"
apt_install "${APT_PACKAGES[@]}"
if ((installed)); then done_step "installed $installed"; else done_step "all ${#APT_PACKAGES[@]} present"; fi

# ---------------------------------------------------------------------------------------------
step "CRIU $CRIU_VERSION"
criu_ok() {
  [ "$(readlink -f "$CRIU_BIN")" = "$CRIU_PREFIX/criu" ] && "$CRIU_BIN" --version 2>/dev/null | grep -q "Version: $CRIU_VERSION"
}
if criu_ok; then
  done_step "already installed at $CRIU_BIN"
else
  src_dir=$STATE_DIR/src
  mkdir -p "$src_dir"
  tarball=$src_dir/criu_$CRIU_VERSION.orig.tar.xz
  if [ ! -f "$tarball" ] || ! echo "$CRIU_SHA256  $tarball" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$tarball"
    # A private apt configuration with a deb-src entry for sid: the system's sources stay untouched.
    apt_dir=$STATE_DIR/apt-sid-src
    mkdir -p "$apt_dir/lists/partial"
    echo 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main' \
      >"$apt_dir/sources.list"
    # Check-Valid-Until off: a mirror may serve a sid index whose Release date has lapsed; the
    # pinned SHA-256 below is what guards the tarball.
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
      -o "Dir::State::Lists=$apt_dir/lists" -o "APT::Get::List-Cleanup=0" -o "Acquire::Check-Valid-Until=false")
    apt-get "${apt_opts[@]}" update -qq >"$LOG_DIR/criu-src.log" 2>&1 || true
    # The .debian.tar.xz part may 404 (so the command fails): judge by the tarball, not the exit code.
    (cd "$src_dir" && apt-get "${apt_opts[@]}" source --download-only "criu/sid" >>"$LOG_DIR/criu-src.log" 2>&1) || true
  fi
  [ -f "$tarball" ] || fail "Debian's archive did not serve criu_$CRIU_VERSION.orig.tar.xz for sid (log: $LOG_DIR/criu-src.log)" \
    "sid may have moved past CRIU $CRIU_VERSION: place the tarball (sha256 $CRIU_SHA256) at $tarball and re-run"
  echo "$CRIU_SHA256  $tarball" | sha256sum -c --quiet - ||
    fail "criu_$CRIU_VERSION.orig.tar.xz does not match the pinned sha256 $CRIU_SHA256" \
      "the tarball changed upstream; verify it and update CRIU_SHA256 in $0, or place the known-good tarball at $tarball"
  build_dir=$src_dir/criu-$CRIU_VERSION
  rm -rf "$build_dir"
  tar -C "$src_dir" -xf "$tarball"
  # RUNDIR=/dev/shm keeps CRIU's kernel-feature cache on a tmpfs: /run is not one here, and without
  # the cache every CRIU call re-probes the kernel (~25 ms more per restore, platform.md).
  # NO_GNUTLS and failing nftables feature tests: the lean flavour above, whatever -dev packages
  # the host has.
  make -C "$build_dir" -j"$(nproc)" criu RUNDIR=/dev/shm NO_GNUTLS=1 \
    FEATURE_TEST_NFTABLES_LIB_API_0='#error built without nftables' \
    FEATURE_TEST_NFTABLES_LIB_API_1='#error built without nftables' >"$LOG_DIR/criu-build.log" 2>&1 ||
    fail "building CRIU failed (log: $LOG_DIR/criu-build.log)" "install the build dependencies listed in $0 and re-run"
  mkdir -p "$CRIU_PREFIX"
  install -m 0755 "$build_dir/criu/criu" "$CRIU_PREFIX/criu"
  ln -sf "$CRIU_PREFIX/criu" "$CRIU_BIN"
  # Builds of other versions or flavours are unused now.
  find "$(dirname "$CRIU_PREFIX")" -maxdepth 1 -name 'criu-*' ! -path "$CRIU_PREFIX" -exec rm -rf {} +
  rm -rf "$build_dir"
  criu_ok || fail "$CRIU_BIN does not report version $CRIU_VERSION" "see $LOG_DIR/criu-build.log"
  done_step "built and installed at $CRIU_BIN"
fi

# ---------------------------------------------------------------------------------------------
# The executor's C programs (executor/native: the sandbox helper and the self-test's probe server),
# installed in /usr/local/lib/initless with a build-id file; a changed source builds them again.
step "native programs"
if out=$(bash "$(dirname "$0")/build-native.sh" 2>"$LOG_DIR/native-build.log"); then
  done_step "${out#build-native: }"
else
  fail "building the sandbox helper failed (log: $LOG_DIR/native-build.log)" "install build-essential and re-run"
fi

# ---------------------------------------------------------------------------------------------
step "Docker daemon configuration"
mkdir -p /etc/docker
# Merge "experimental": true into an existing daemon.json instead of replacing it.
changed=$(node -e '
  const fs = require("node:fs");
  const file = "/etc/docker/daemon.json";
  let cfg = {};
  if (fs.existsSync(file)) {
    const text = fs.readFileSync(file, "utf8").trim();
    try { cfg = text ? JSON.parse(text) : {}; } catch (e) { console.error("invalid JSON in " + file + ": " + e.message); process.exit(3); }
  }
  // The registry started below speaks plain HTTP: the engine allows that for loopback
  // addresses only, any other one must be listed.
  const registry = process.argv[1];
  const insecure = cfg["insecure-registries"] ?? [];
  const wantsListing = !/^(127\.|localhost(:|$))/.test(registry) && !insecure.includes(registry);
  if (cfg.experimental === true && !wantsListing) { console.log("no"); process.exit(0); }
  cfg.experimental = true;
  if (wantsListing) cfg["insecure-registries"] = [...insecure, registry];
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2) + "\n");
  console.log("yes");
' "$REGISTRY_ADDRESS") || fail "/etc/docker/daemon.json is not valid JSON" "fix or remove /etc/docker/daemon.json and re-run"
done_step "$([ "$changed" = yes ] && echo 'updated' || echo 'experimental already on')"

# has_systemd, wait_for, restart_docker, start_docker, start_redis, start_queue_redis, start_registry
. "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"

step "Docker engine"
if docker info >/dev/null 2>&1 && [ "$changed" != yes ]; then
  done_step "running"
else
  if docker info >/dev/null 2>&1; then
    # Running, but without the new configuration: restart it so experimental takes effect.
    restart_docker || fail "the Docker engine did not restart" "stop dockerd (or systemctl restart docker) by hand and re-run"
  fi
  if ! docker info >/dev/null 2>&1; then start_docker; fi
  wait_for 60 docker info || fail "the Docker engine did not answer within 60 s (log: $LOG_DIR/dockerd.log)" \
    "read $LOG_DIR/dockerd.log; a stale /var/run/docker.pid can be removed once no dockerd runs"
  done_step "started"
fi
[ "$(docker info --format '{{.ExperimentalBuild}}' 2>/dev/null)" = true ] ||
  fail "the Docker engine is not in experimental mode" "restart dockerd so it reads /etc/docker/daemon.json"

# ---------------------------------------------------------------------------------------------
step "Redis"
if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
  done_step "answering on port $REDIS_PORT"
else
  start_redis "$REDIS_PORT"
  wait_for 20 bash -c "redis-cli -p $REDIS_PORT ping | grep -q PONG" ||
    fail "Redis did not answer on 127.0.0.1:$REDIS_PORT (log: $LOG_DIR/redis.log)" "read $LOG_DIR/redis.log"
  done_step "started on port $REDIS_PORT"
fi

# ---------------------------------------------------------------------------------------------
step "queue Redis (asynchronous invocations, appendfsync always)"
[ "$QUEUE_REDIS_PORT" != "$REDIS_PORT" ] ||
  fail "the queue Redis and the registry's Redis would both listen on port $REDIS_PORT" \
    "set INITLESS_ASYNC_REDIS_PORT to a free port (default 6381)"
# Debian's redis-server@.service reads /etc/redis/redis-<instance>.conf and may write only below
# /var/lib/redis; without systemd the data lives with initless's own.
QUEUE_REDIS_CONF=/etc/redis/redis-$QUEUE_REDIS_INSTANCE.conf
if has_systemd; then queue_dir=/var/lib/redis/$QUEUE_REDIS_INSTANCE; else queue_dir=$STATE_DIR/queue-redis; fi
mkdir -p "$queue_dir" /etc/redis
chmod 0750 "$queue_dir"
if has_systemd; then chown redis:redis "$queue_dir"; fi
want_queue_conf=$(queue_redis_conf "$QUEUE_REDIS_PORT" "$queue_dir")
if [ "$(cat "$QUEUE_REDIS_CONF" 2>/dev/null)" != "$want_queue_conf" ]; then
  printf '%s\n' "$want_queue_conf" >"$QUEUE_REDIS_CONF"
  chown redis:redis "$QUEUE_REDIS_CONF"
  chmod 0640 "$QUEUE_REDIS_CONF"
fi
queue_cli() { redis-cli -p "$QUEUE_REDIS_PORT" "$@"; }
queue_policy() { echo "$(queue_cli config get appendonly | tail -1)/$(queue_cli config get appendfsync | tail -1)"; }
if queue_cli ping 2>/dev/null | grep -q PONG; then
  # Running already (this script started it, or someone else on this port): made durable in place;
  # the configuration file says the same for its next start.
  if [ "$(queue_policy)" != yes/always ]; then
    queue_cli config set appendonly yes >/dev/null && queue_cli config set appendfsync always >/dev/null ||
      fail "could not switch the Redis on port $QUEUE_REDIS_PORT to appendonly yes + appendfsync always" \
        "stop what listens on port $QUEUE_REDIS_PORT, or set INITLESS_ASYNC_REDIS_PORT to a free port"
  fi
  queue_state="answering on port $QUEUE_REDIS_PORT"
else
  start_queue_redis "$QUEUE_REDIS_CONF"
  wait_for 20 bash -c "redis-cli -p $QUEUE_REDIS_PORT ping | grep -q PONG" ||
    fail "the queue Redis did not answer on 127.0.0.1:$QUEUE_REDIS_PORT" \
      "read $(has_systemd && echo "journalctl -u redis-server@$QUEUE_REDIS_INSTANCE" || echo "$LOG_DIR/queue-redis.log")"
  queue_state="started on port $QUEUE_REDIS_PORT"
fi
[ "$(queue_policy)" = yes/always ] ||
  fail "the queue Redis on port $QUEUE_REDIS_PORT runs $(queue_policy) (appendonly/appendfsync), not yes/always" \
    "check $QUEUE_REDIS_CONF, then re-run"
done_step "$queue_state, appendonly yes, appendfsync always (INITLESS_ASYNC_REDIS_URL=redis://127.0.0.1:$QUEUE_REDIS_PORT)"

# ---------------------------------------------------------------------------------------------
step "OCI registry"
registry_up() { curl -fsS -o /dev/null --max-time 2 "http://$REGISTRY_ADDRESS/v2/" 2>/dev/null; }
mkdir -p /etc/initless "$REGISTRY_DATA"
chown docker-registry:docker-registry "$REGISTRY_DATA"
want_config="version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $REGISTRY_DATA
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDRESS
health:
  storagedriver:
    enabled: true"
registry_changed=no
if [ "$(cat "$REGISTRY_CONFIG" 2>/dev/null)" != "$want_config" ]; then
  printf '%s\n' "$want_config" >"$REGISTRY_CONFIG"
  registry_changed=yes
fi
if [ "$registry_changed" = no ] && registry_up; then
  done_step "answering on $REGISTRY_ADDRESS"
else
  start_registry "$REGISTRY_CONFIG"
  wait_for 20 registry_up ||
    fail "the OCI registry did not answer on $REGISTRY_ADDRESS (log: $LOG_DIR/registry.log)" "read $LOG_DIR/registry.log"
  done_step "started on $REGISTRY_ADDRESS (INITLESS_IMAGE_REGISTRY=$REGISTRY_ADDRESS shares images between hosts)"
fi

# ---------------------------------------------------------------------------------------------
if [ "$BUILD_BASE_IMAGE" = 1 ]; then
  step "base image $BASE_IMAGE"
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    done_step "present"
  else
    # No container registry here: debootstrap a minimal Debian and import it as an image.
    root=$(mktemp -d "$STATE_DIR/debootstrap.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$LOG_DIR/debootstrap.log" 2>&1 ||
      fail "debootstrap failed (log: $LOG_DIR/debootstrap.log)" "check that deb.debian.org is reachable, then re-run"
    # Keep images small: no apt caches, no docs. Same settings Debian's official images use.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    printf 'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
      >"$root/etc/apt/sources.list"
    tar -C "$root" -c . | docker import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    trap - EXIT
    done_step "built"
  fi
fi

# ---------------------------------------------------------------------------------------------
step "kernel tuning"
. "$(dirname "${BASH_SOURCE[0]}")/host-tuning.sh"
done_step "$(tune_kernel)"

echo "provision: done"
