#!/usr/bin/env bash
# Fresh-machine check: runs the README's two commands from a clean clone on a machine with nothing
# installed, and reports each one's result and duration (docs/fresh-check.md).
#   1. a clean clone of REF of this repository
#   2. a new container from the local Debian 12 base image (debootstrap minbase: nothing but
#      Debian's required packages) with the privileges of a machine's root and its own state: its
#      own cgroup namespace, /run, and /var (the image's, copied) and /tmp on host directories,
#      since the overlay mounts that Docker and initless make do not work on the container's own
#      overlay root; it runs its own Docker engine, Redis, CRIU and initless; only the kernel (and
#      /lib/modules, read-only) is the host's
#   3. the machine's own set-up, as any real machine has it: shared mount propagation, rw cgroup
#      mounts (plus cgroup2 at /sys/fs/cgroup/unified when the host has one), the host's locally
#      added CA certificates (a TLS-intercepting proxy's) with Debian's ca-certificates. Nothing
#      else is installed here: what the commands need, the project's scripts must install
#   4. `bash scripts/up.sh`: until "initless is up"; then every sample gets one cold request through
#      the gateway (scripts/fresh-check-samples.mjs); then SIGINT, a clean exit and nothing left
#   5. `bash scripts/test.sh`: its exit code and the runner's summary
#   6. removes the container and its state (logs stay); exit code 0 only when every step passed
#
# Usage: sudo bash scripts/fresh-check.sh [options]
#   --ref REF          commit to check (default HEAD; uncommitted changes are not part of a clone)
#   --dir DIR          where the run's directory goes (default /var/tmp/initless-fresh-check)
#   --timeout MINUTES  limit for the whole run (default 90)
#   --keep             keep the container and its state afterwards (for debugging)
#   --no-up / --no-test  skip that command
# Environment: INITLESS_BASE_IMAGE  the Debian 12 image to start from (default initless/debian:bookworm)
set -Eeuo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
REF=HEAD
BASE_DIR=/var/tmp/initless-fresh-check
TIMEOUT_MIN=90
KEEP=0
RUN_UP=1
RUN_TEST=1
IMAGE=${INITLESS_BASE_IMAGE:-initless/debian:bookworm}
usage() { sed -n '2,26p' "$0"; }
while (($#)); do
  case "$1" in
    --ref) REF=${2:?--ref needs a value}; shift ;;
    --dir) BASE_DIR=${2:?--dir needs a value}; shift ;;
    --timeout) TIMEOUT_MIN=${2:?--timeout needs a value}; shift ;;
    --keep) KEEP=1 ;;
    --no-up) RUN_UP=0 ;;
    --no-test) RUN_TEST=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "fresh-check: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $TIMEOUT_MIN =~ ^[1-9][0-9]*$ ]] || { echo "fresh-check: --timeout takes whole minutes, got '$TIMEOUT_MIN'" >&2; exit 2; }

# Inside the container: the clone, and where the harness keeps its own files (a tmpfs, not the
# machine's disk).
SRC=/root/initless
HARNESS=/run/fresh-check
# Free space the run needs under --dir: images, snapshots (flask-table's is ~1 GB) and test state.
MIN_FREE_GB=25
# Give `initless up` this long to stop after SIGINT (it gives its processes 30 s).
STOP_LIMIT_S=60

die() { echo "fresh-check: $1" >&2; exit 2; }
now_s() { date +%s; }
fmt_s() { local s=$1; if ((s >= 60)); then printf '%d min %02d s' $((s / 60)) $((s % 60)); else printf '%d s' "$s"; fi; }
deadline=$(($(now_s) + TIMEOUT_MIN * 60))
left_s() { local l=$((deadline - $(now_s))); echo $((l > 0 ? l : 1)); }

[ "$(id -u)" = 0 ] || die "must run as root (it starts a container with a machine's privileges): sudo bash $0"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (bash scripts/provision.sh starts it)"
docker image inspect "$IMAGE" >/dev/null 2>&1 ||
  die "no image $IMAGE (bash scripts/provision.sh builds it; or set INITLESS_BASE_IMAGE)"
sha=$(git -C "$REPO" rev-parse --verify --quiet "$REF^{commit}") || die "'$REF' is not a commit of $REPO"
mkdir -p "$BASE_DIR"
free_gb=$(($(df --output=avail -k "$BASE_DIR" | tail -1) / 1024 / 1024))
((free_gb >= MIN_FREE_GB)) || die "only $free_gb GB free under $BASE_DIR, the run needs $MIN_FREE_GB GB (use --dir)"

run_id=$(date +%Y%m%d-%H%M%S)-${sha:0:8}
RUN=$BASE_DIR/$run_id
LOGS=$RUN/logs
MACHINE=$RUN/machine
NAME=initless-fresh-$run_id
mkdir -p "$LOGS" "$MACHINE/tmp"
chmod 1777 "$MACHINE/tmp"
REPORT=$LOGS/report.txt
report() { printf '%s\n' "$*" | tee -a "$REPORT"; }
in_machine() { docker exec -i "$NAME" bash -s; } # the script on stdin

cleanup() {
  local code=$?
  trap - EXIT
  set +e
  if [ "$KEEP" = 1 ]; then
    echo "fresh-check: kept container $NAME and $RUN (remove: docker rm -f $NAME; rm -rf $RUN)"
  else
    docker rm -f "$NAME" ${seed:+"$seed"} >/dev/null 2>&1
    # The container's mounts died with its mount namespace; never delete through a mount.
    if grep -q " $RUN/" /proc/self/mountinfo; then
      echo "fresh-check: something is mounted under $RUN: left in place" >&2
    else
      rm -rf "$MACHINE" "$RUN/src"
    fi
  fi
  echo "fresh-check: logs in $LOGS"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

report "fresh-check: $REF = $sha, image $IMAGE, container $NAME, limit $TIMEOUT_MIN min"

# ---------------------------------------------------------------------------------------------
# A clean clone; fetched by hash too, since a detached commit is on no branch a clone copies.
git clone --quiet --no-checkout "$REPO" "$RUN/src"
git -C "$RUN/src" fetch --quiet "$REPO" "$sha"
git -C "$RUN/src" checkout --quiet --detach "$sha"

# The machine's /var starts as the image's: every state dir (Docker's, containerd's, initless's
# and the tests' /var/lib/initless-*) is then on the host's file system.
seed=$(docker create "$IMAGE" true)
docker export "$seed" | tar -x -p --numeric-owner -C "$MACHINE" var
docker rm "$seed" >/dev/null

# A machine's root holds every capability. `--privileged` asks for every capability the kernel
# knows, which fails where the host's own bounding set lacks one (here: CAP_SYS_RESOURCE): then the
# same privileges are given one by one, without the capabilities the host lacks.
cap_bnd=$((16#$(awk '/^CapBnd/ {print $2}' /proc/self/status)))
cap_all=$(((1 << ($(cat /proc/sys/kernel/cap_last_cap) + 1)) - 1))
if ((cap_bnd == cap_all)); then
  privileges=(--privileged)
else
  command -v capsh >/dev/null || die "the host lacks some capabilities and capsh (libcap2-bin) is needed to name them"
  privileges=(--cap-add ALL --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm')
  missing=$(capsh --decode="$(printf '%x' $((cap_all & ~cap_bnd)))" | sed 's/^.*=//')
  for cap in ${missing//,/ }; do privileges+=(--cap-drop "${cap#cap_}"); done
  # --privileged also gives the host's devices. Here its character devices (/dev/kmsg, /dev/fuse,
  # /dev/net/tun, /dev/userfaultfd, ...: a test opens /dev/kmsg to prove the device cgroup denies
  # it), but not its terminals, nor those Docker creates anyway, nor its disks.
  while IFS= read -r dev; do privileges+=(--device "$dev"); done < <(
    find /dev -maxdepth 2 -type c ! -path '/dev/pts/*' ! -name 'tty*' ! -name 'vcs*' \
      ! -name console ! -name ptmx ! -name null ! -name zero ! -name full ! -name random ! -name urandom
  )
fi
# cgroupns private: the machine sees its own cgroup as the root (as a host sees its own), and its
# Docker engine and initless create their cgroups under it, never beside the host's.
docker run -d --name "$NAME" --hostname initless-fresh --label initless.fresh-check="$run_id" \
  "${privileges[@]}" --cgroupns private --init --shm-size 2g \
  --tmpfs /run:rw,nosuid,nodev,exec,mode=755,size=1g \
  -v "$MACHINE/var:/var" -v "$MACHINE/tmp:/tmp" -v "$RUN/src:$SRC" \
  -v /lib/modules:/lib/modules:ro \
  "$IMAGE" sleep infinity >/dev/null

# ---------------------------------------------------------------------------------------------
t0=$(now_s)
unified=0
grep -q ' /sys/fs/cgroup/unified .* cgroup2 ' /proc/self/mountinfo && unified=1
docker exec "$NAME" mkdir -p /usr/local/share/ca-certificates "$HARNESS"
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
  docker cp /usr/local/share/ca-certificates/. "$NAME:/usr/local/share/ca-certificates/"
fi
if timeout "$(left_s)" docker exec -e UNIFIED="$unified" "$NAME" bash -c '
  set -euo pipefail
  mount --make-rshared /
  # Docker mounts these read-only unless --privileged; a machine has them writable.
  mount -o remount,bind,rw /sys
  for m in /sys/fs/cgroup /sys/fs/cgroup/*; do mountpoint -q "$m" && mount -o remount,bind,rw "$m"; done
  if [ "$UNIFIED" = 1 ]; then mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ca-certificates
' >"$LOGS/machine.log" 2>&1; then
  report "  machine set-up           ok      $(fmt_s $(($(now_s) - t0)))"
else
  report "  machine set-up           FAILED  $(fmt_s $(($(now_s) - t0))) (log: $LOGS/machine.log)"
  tail -20 "$LOGS/machine.log" >&2
  exit 1
fi

status=0

# ---------------------------------------------------------------------------------------------
# up.sh runs in the background; its pid (bash execs up.sh, which execs node) takes the SIGINT.
if [ "$RUN_UP" = 1 ]; then
  t0=$(now_s)
  docker exec "$NAME" bash -lc "cd $SRC && echo \$\$ >$HARNESS/up.pid && exec bash scripts/up.sh" \
    >"$LOGS/up.log" 2>&1 &
  up_pid=$!
  url=""
  while :; do
    url=$(sed -n 's/^initless is up at \(http[^ ]*\).*$/\1/p' "$LOGS/up.log" | head -1)
    [ -n "$url" ] && break
    kill -0 "$up_pid" 2>/dev/null || break
    (($(now_s) < deadline)) || break
    sleep 2
  done
  up_s=$(($(now_s) - t0))
  if [ -z "$url" ]; then
    status=1
    if kill -0 "$up_pid" 2>/dev/null; then
      report "  bash scripts/up.sh       FAILED  not up within the time limit ($(fmt_s "$up_s"))"
    else
      wait "$up_pid" && code=0 || code=$?
      report "  bash scripts/up.sh       FAILED  exit $code after $(fmt_s "$up_s"), never up"
    fi
    tail -30 "$LOGS/up.log" | sed 's/^/      | /' | tee -a "$REPORT"
  else
    report "  bash scripts/up.sh       up      $(fmt_s "$up_s") to \"initless is up at $url\""
    t0=$(now_s)
    if timeout "$(left_s)" docker exec -i -w "$SRC" "$NAME" bash -lc "node --input-type=module - $url" \
      <"$REPO/scripts/fresh-check-samples.mjs" >"$LOGS/samples.log" 2>&1; then samples=ok; else samples=FAILED; status=1; fi
    report "    samples, one cold request each: $samples ($(fmt_s $(($(now_s) - t0))))"
    sed 's/^/      /' "$LOGS/samples.log" | tee -a "$REPORT"
    t0=$(now_s)
    in_machine <<<"kill -INT \$(cat $HARNESS/up.pid)" || true
    stop_deadline=$(($(now_s) + STOP_LIMIT_S))
    while kill -0 "$up_pid" 2>/dev/null && (($(now_s) < stop_deadline)); do sleep 0.5; done
    if kill -0 "$up_pid" 2>/dev/null; then
      status=1
      report "    SIGINT: FAILED, still running after $STOP_LIMIT_S s"
    else
      wait "$up_pid" && code=0 || code=$?
      # What a clean stop leaves behind: none of its processes, sandboxes or mounts. (Read from
      # stdin: a script given as an argument would find itself in the process list.)
      left=$(in_machine <<'EOF2'
        for p in /proc/[0-9]*; do
          c=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
          case "$c" in
            *'initless.mjs up'* | *executor/main.ts* | *gateway/main.ts* | criu\ * | *initless-sandbox-helper*)
              echo "process ${p#/proc/}: $c" ;;
          esac
        done
        for d in /sys/fs/cgroup/*/initless/*/; do
          [ -d "$d" ] && echo "cgroup $d ($(wc -l <"$d/cgroup.procs") processes)"
        done
        ls /run/netns 2>/dev/null | sed -n 's/^initless-/netns initless-/p'
        awk '$5 ~ "^/var/lib/initless/" {print "mount " $5}' /proc/self/mountinfo
EOF2
      )
      if [ "$code" = 0 ] && [ -z "$left" ]; then
        report "    SIGINT: ok, exit 0 in $(fmt_s $(($(now_s) - t0))), nothing left running or mounted"
      else
        status=1
        report "    SIGINT: FAILED, exit $code in $(fmt_s $(($(now_s) - t0)))${left:+; left behind:}"
        [ -z "$left" ] || printf '%s\n' "$left" | sed 's/^/      /' | tee -a "$REPORT"
      fi
    fi
  fi
fi

# ---------------------------------------------------------------------------------------------
if [ "$RUN_TEST" = 1 ]; then
  t0=$(now_s)
  timeout "$(left_s)" docker exec "$NAME" bash -lc "cd $SRC && bash scripts/test.sh" >"$LOGS/test.log" 2>&1 &&
    code=0 || code=$?
  test_s=$(($(now_s) - t0))
  # Exit 0 alone is not enough: a docker client stopped from outside can exit 0 too.
  if [ "$code" = 0 ] && grep -q '^run-tests: [0-9]* files' "$LOGS/test.log" &&
    ! grep -q '^run-tests: failed' "$LOGS/test.log"; then
    report "  bash scripts/test.sh     ok      $(fmt_s "$test_s")"
  else
    status=1
    case "$code" in
      0) what="exit 0 without a passing run-tests summary" ;;
      124) what="killed at the time limit" ;;
      *) what="exit $code" ;;
    esac
    report "  bash scripts/test.sh     FAILED  $what after $(fmt_s "$test_s")"
  fi
  if grep -q '^run-tests: ' "$LOGS/test.log"; then
    grep '^run-tests: ' "$LOGS/test.log" | sed 's/^/    /' | tee -a "$REPORT"
  elif [ "$code" != 0 ]; then
    tail -30 "$LOGS/test.log" | sed 's/^/      | /' | tee -a "$REPORT"
  fi
fi

if [ "$status" = 0 ]; then report "fresh-check: passed"; else report "fresh-check: FAILED"; fi
exit "$status"
