#!/usr/bin/env bash
# Check a git ref of initless on a real cgroup v2 + systemd host: a Debian 12 virtual machine
# under QEMU software emulation (TCG). Builds the disk image once, provisions it once into a
# copy-on-write overlay, and for each check boots a throw-away overlay of the provisioned state,
# copies a clean export of the ref into it, runs the ref's provisioning (a re-run: only what the
# ref changed), `npm ci`, `initless doctor` and one cold start of hello-node through the gateway,
# records results and timings on the host, and powers the machine off. See docs/cgroup-v2-vm.md.
#
# Usage: sudo scripts/vm-check.sh [--ref REF] [--reprovision] [--rebuild-image] [--keep-running]
#        sudo scripts/vm-check.sh ssh [COMMAND...]   # a shell in (or a command on) a running VM
#        sudo scripts/vm-check.sh stop               # power off a VM left running
#        sudo scripts/vm-check.sh resume             # boot the last check's disk again, keep it up
#   --ref REF          commit, branch or tag of this repository to check (default HEAD; only
#                      committed content is copied)
#   --reprovision      provision a new overlay from this ref instead of reusing the kept one
#   --rebuild-image    debootstrap the base disk image again (implies --reprovision)
#   --keep-running     leave the VM running after the check (then: `vm-check.sh ssh`, `... stop`)
# Environment (all optional):
#   INITLESS_VM_DIR       disk images, keys and results           (default /var/lib/initless-vm)
#   INITLESS_VM_SSH_PORT  port on 127.0.0.1 forwarded to the VM's ssh (default 2222)
#   INITLESS_VM_MEMORY    guest memory                             (default 8G)
#   INITLESS_VM_CPUS      guest vCPUs                              (default 2)
set -Eeuo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VM_DIR=${INITLESS_VM_DIR:-/var/lib/initless-vm}
SSH_PORT=${INITLESS_VM_SSH_PORT:-2222}
MEMORY=${INITLESS_VM_MEMORY:-8G}
CPUS=${INITLESS_VM_CPUS:-2}
# Node.js the guest gets when the ref's provisioning does not install one >= 20 itself: the npm
# registry's `node` package, which installs the official binaries (Debian 12's nodejs is 18).
NODE_FALLBACK_VERSION=20.20.2
# Part of the base image's identity: a change to build_image() below must bump it so that kept
# images (and the overlays provisioned on them) are rebuilt.
IMAGE_RECIPE=1
DISK_SIZE=40G
# Emulation is 10-15x slower than the host: deadlines are sized for that.
BOOT_TIMEOUT_S=300
UP_TIMEOUT_S=2400

REF=HEAD
REPROVISION=0
REBUILD_IMAGE=0
KEEP_RUNNING=0
ACTION=check
case "${1:-}" in
  ssh | stop | resume) ACTION=$1; shift ;;
esac
if [ "$ACTION" = check ]; then
  while (($#)); do
    case "$1" in
      --ref) REF=${2:?--ref needs a value}; shift 2 ;;
      --reprovision) REPROVISION=1; shift ;;
      --rebuild-image) REBUILD_IMAGE=1; REPROVISION=1; shift ;;
      --keep-running) KEEP_RUNNING=1; shift ;;
      -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
      *) echo "vm-check: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
  done
fi

BASE=$VM_DIR/base.qcow2
KERNEL=$VM_DIR/vmlinuz
INITRD=$VM_DIR/initrd.img
KEY=$VM_DIR/id_ed25519
KNOWN_HOSTS=$VM_DIR/known_hosts
PROVISIONED=$VM_DIR/provisioned.qcow2
RUN_DISK=$VM_DIR/run.qcow2
PIDFILE=$VM_DIR/qemu.pid
CONSOLE=$VM_DIR/console.log
GUEST_REPO=/root/initless

now_ms() { date +%s%3N; }
log() { printf '%s\n' "$*"; }
die() {
  printf '\nvm-check: FAILED: %s\n' "$1" >&2
  [ -n "${2:-}" ] && printf '  see: %s\n' "$2" >&2
  exit 1
}

# --- results and timings ----------------------------------------------------------------------
RESULTS=""
step_name=""
step_start=0
step() {
  step_name=$1
  step_start=$(now_ms)
  log "==> $step_name"
}
done_step() { # done_step [note]
  local ms=$(($(now_ms) - step_start))
  log "    ok (${ms} ms)${1:+ — $1}"
  [ -n "$RESULTS" ] && printf '%s\t%s\t%s\n' "$step_name" "$ms" "${1:-}" >>"$RESULTS/timings.tsv"
  return 0
}
record() { [ -n "$RESULTS" ] && printf '%s\n' "$*" >>"$RESULTS/summary.txt"; log "    $*"; }

# --- the VM -----------------------------------------------------------------------------------
SSH_OPTS=(-i "$KEY" -p "$SSH_PORT" -o BatchMode=yes -o IdentitiesOnly=yes -o HostKeyAlias=initless-vm
  -o "UserKnownHostsFile=$KNOWN_HOSTS" -o StrictHostKeyChecking=yes -o ConnectTimeout=10
  -o ServerAliveInterval=30 -o ServerAliveCountMax=20 -o LogLevel=ERROR)
vm_ssh() { ssh "${SSH_OPTS[@]}" root@127.0.0.1 "$@"; }

qemu_pid() { [ -f "$PIDFILE" ] && cat "$PIDFILE"; }
vm_running() {
  local pid
  pid=$(qemu_pid) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q qemu-system "/proc/$pid/cmdline" 2>/dev/null
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

boot() { # boot DISK
  vm_running && die "a VM started by this script is still running (pid $(qemu_pid))" "stop it: $0 stop"
  port_free "$SSH_PORT" || die "port 127.0.0.1:$SSH_PORT is in use" "set INITLESS_VM_SSH_PORT to a free port"
  : >"$CONSOLE"
  # Software emulation: /dev/kvm here is PVM, where QEMU's -cpu host/max abort and -cpu qemu64
  # crawls (docs/cgroup-v2-vm.md). The kernel and initrd come from the host side: no boot loader.
  # User-mode networking: the guest reaches the package archives through QEMU; the host reaches
  # the guest only through the ssh port forwarded on 127.0.0.1. romfile= skips the PXE ROM.
  qemu-system-x86_64 -machine q35 -accel tcg,thread=multi -cpu max -smp "$CPUS" -m "$MEMORY" \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -append 'root=LABEL=initless-root rw console=ttyS0 net.ifnames=0 systemd.show_status=0' \
    -drive "file=$1,if=virtio,format=qcow2,discard=unmap" \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22" -device virtio-net-pci,netdev=net0,romfile= \
    -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-pci,rng=rng0 \
    -vga none -display none -monitor none -serial "file:$CONSOLE" -daemonize -pidfile "$PIDFILE" \
    >"$VM_DIR/qemu.log" 2>&1 || die "qemu did not start" "$VM_DIR/qemu.log"
  local deadline=$(($(date +%s) + BOOT_TIMEOUT_S))
  until vm_ssh true 2>/dev/null; do
    vm_running || die "the VM exited while booting" "$CONSOLE"
    [ "$(date +%s)" -lt "$deadline" ] || die "no ssh answer within $BOOT_TIMEOUT_S s" "$CONSOLE"
    sleep 2
  done
}

shutdown_vm() {
  vm_running || return 0
  vm_ssh 'systemctl poweroff' >/dev/null 2>&1 || true
  local deadline=$(($(date +%s) + 180))
  while vm_running; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "    the VM did not power off within 180 s: stopping qemu (pid $(qemu_pid))"
      kill "$(qemu_pid)" 2>/dev/null || true
      sleep 2
    fi
    sleep 1
  done
  rm -f "$PIDFILE"
}

# --- host packages ----------------------------------------------------------------------------
host_packages() {
  step "host packages"
  local pkgs=(qemu-system-x86 qemu-utils debootstrap openssh-client e2fsprogs iproute2) missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    # One apt user at a time on a shared machine; dpkg's own lock may be held by provisioning.
    flock /tmp/initless-apt.lock apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
      "${missing[@]}" >"$VM_DIR/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed" "$VM_DIR/apt.log"
    done_step "installed ${missing[*]}"
  else
    done_step "present"
  fi
}

# --- the base disk image ----------------------------------------------------------------------
build_image() {
  step "base image (debootstrap Debian 12 + systemd + kernel)"
  local root raw
  BUILD_WORK=$(mktemp -d "$VM_DIR/build.XXXXXX")
  local work=$BUILD_WORK
  root=$work/root
  raw=$work/disk.raw
  [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C initless-vm-check -f "$KEY"
  # linux-image-amd64 builds its initrd natively here (MODULES=most: virtio included); inside the
  # emulated guest the same takes ~13 minutes, so the image turns initramfs updates off below.
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,udev,kmod,openssh-server,linux-image-amd64,initramfs-tools,ca-certificates,curl,iproute2,procps,less \
    bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
    { cp "$work/debootstrap.log" "$VM_DIR/debootstrap.log"; die "debootstrap failed" "$VM_DIR/debootstrap.log"; }
  printf 'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    >"$root/etc/apt/sources.list"
  sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$root/etc/initramfs-tools/update-initramfs.conf"
  echo initless-vm >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 initless-vm\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  echo 'LABEL=initless-root / ext4 defaults,discard 0 1' >"$root/etc/fstab"
  # QEMU user networking: DHCP from 10.0.2.2, DNS at 10.0.2.3 (also what Docker hands containers).
  printf '[Match]\nName=eth* en*\n\n[Network]\nDHCP=ipv4\n' >"$root/etc/systemd/network/80-dhcp.network"
  echo 'nameserver 10.0.2.3' >"$root/etc/resolv.conf"
  chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
  # The host's locally added CAs (an intercepting proxy on some networks): the guest's apt, npm,
  # curl and Docker builds need them as the host does. Node reads only its own bundle without
  # NODE_EXTRA_CA_CERTS; sshd's PAM session reads /etc/environment.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
  fi
  echo 'NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' >>"$root/etc/environment"
  install -d -m 0700 "$root/root/.ssh"
  install -m 0600 "$KEY.pub" "$root/root/.ssh/authorized_keys"
  printf 'initless-vm %s\n' "$(cut -d' ' -f1,2 "$root/etc/ssh/ssh_host_ed25519_key.pub")" >"$KNOWN_HOSTS"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  cp "$(readlink -f "$root/vmlinuz")" "$KERNEL.tmp"
  cp "$(readlink -f "$root/initrd.img")" "$INITRD.tmp"
  # An ext4 file system filled from the directory: no loop device, nothing mounted.
  truncate -s "$DISK_SIZE" "$raw"
  mkfs.ext4 -q -L initless-root -d "$root" "$raw" >"$work/mkfs.log" 2>&1 ||
    { cp "$work/mkfs.log" "$VM_DIR/mkfs.log"; die "mkfs.ext4 -d failed" "$VM_DIR/mkfs.log"; }
  qemu-img convert -O qcow2 "$raw" "$BASE.tmp"
  mv "$KERNEL.tmp" "$KERNEL"
  mv "$INITRD.tmp" "$INITRD"
  mv "$BASE.tmp" "$BASE"
  rm -f "$PROVISIONED" "$VM_DIR/provisioned.info" "$RUN_DISK"
  printf 'recipe=%s\nbuilt=%s\nkernel=%s\n' "$IMAGE_RECIPE" "$(date -u +%FT%TZ)" \
    "$(basename "$(readlink -f "$root/vmlinuz")")" >"$VM_DIR/base.info"
  remove_build_work
  done_step "$(grep ^kernel= "$VM_DIR/base.info" | cut -d= -f2), $(du -h "$BASE" | cut -f1) on disk"
}

# debootstrap mounts /proc and /sys inside the target while it installs: never leave them behind.
BUILD_WORK=""
remove_build_work() {
  [ -n "$BUILD_WORK" ] || return 0
  local m
  for m in $(awk -v p="$BUILD_WORK/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do umount -l "$m"; done
  rm -rf "$BUILD_WORK"
  BUILD_WORK=""
}

# --- in the guest -----------------------------------------------------------------------------
copy_ref() { # copy_ref COMMIT
  step "copy $1 into the VM"
  # git archive: exactly the committed tree, no untracked files, no node_modules.
  git -C "$REPO" archive --format=tar "$1" |
    vm_ssh "rm -rf $GUEST_REPO && mkdir -p $GUEST_REPO && tar -C $GUEST_REPO -xf - && echo $1 >$GUEST_REPO/.vm-check-commit"
  done_step
}

# The ref's own provisioning. A ref whose provision.sh does not yet install Node.js >= 20 stops at
# its Node.js step: the minimum is then done here (Debian's nodejs + npm, then the npm registry's
# node package) and provisioning runs again. A ref that installs Node itself never takes this path.
provision_in_guest() { # provision_in_guest LOGFILE
  local log=$1
  if vm_ssh "cd $GUEST_REPO && bash scripts/provision.sh" >"$log" 2>&1; then return 0; fi
  grep -q 'FAILED at step "Node.js"' "$log" || return 1
  record "node: the ref's provisioning does not install Node.js >= 20; vm-check installed node@$NODE_FALLBACK_VERSION from the npm registry"
  vm_ssh "export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null && npm install -g --no-audit --no-fund --loglevel=error node@$NODE_FALLBACK_VERSION && hash -r && node --version" \
    >>"$log" 2>&1 || return 1
  vm_ssh "cd $GUEST_REPO && bash scripts/provision.sh" >>"$log" 2>&1
}

guest_facts() {
  vm_ssh 'echo "kernel: $(uname -r)"; echo "init: $(ps -p 1 -o comm=) $(systemctl --version | head -1)"
    echo "cgroup: $(stat -fc %T /sys/fs/cgroup) controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
    echo "node: $(node --version 2>/dev/null || echo none)"
    echo "docker: $(docker info --format "{{.ServerVersion}} cgroup {{.CgroupVersion}} driver {{.CgroupDriver}}" 2>/dev/null || echo none), unit $(systemctl is-active docker)"
    echo "apparmor: kernel $(cat /sys/module/apparmor/parameters/enabled 2>/dev/null || echo off), parser $(command -v apparmor_parser || echo missing)"
    echo "runc: $(runc --version 2>/dev/null | head -1 || echo none)"
    echo "criu: $(criu --version 2>/dev/null | head -1 || echo none)"
    echo "redis: $(redis-cli ping 2>/dev/null || echo none), unit $(systemctl is-active redis-server 2>/dev/null)"'
}

# One cold start of hello-node the simplest way the ref allows: `initless up` over a functions
# directory holding only hello-node (build, bake, serve), then one request through the gateway
# (a restore: no instance runs after a bake) and one more (warm).
COLD_START_SCRIPT='
set -u
out=/root/vm-check
rm -rf "$out" && mkdir -p "$out/functions"
cp -r '"$GUEST_REPO"'/functions/hello-node "$out/functions/"
cd '"$GUEST_REPO"'
export INITLESS_FUNCTIONS_DIR=$out/functions
start=$(date +%s%3N)
setsid node bin/initless.mjs up >"$out/up.log" 2>&1 </dev/null &
pid=$!
echo $pid >"$out/up.pid"
deadline=$(( $(date +%s) + '"$UP_TIMEOUT_S"' ))
until grep -q "initless is up" "$out/up.log"; do
  if ! kill -0 $pid 2>/dev/null; then echo "up_exited=1"; echo "up_ms=$(( $(date +%s%3N) - start ))"; exit 0; fi
  if [ "$(date +%s)" -ge "$deadline" ]; then echo "up_timeout=1"; break; fi
  sleep 2
done
echo "up_ms=$(( $(date +%s%3N) - start ))"
for n in cold warm; do
  curl -sS -o "$out/$n.body" -D "$out/$n.headers" -w "${n}_status=%{http_code}\n${n}_total_s=%{time_total}\n" \
    --max-time 300 http://127.0.0.1:8080/fn/hello-node/ || echo "${n}_status=curl-failed"
done
kill -TERM $pid 2>/dev/null
for _ in $(seq 1 90); do kill -0 $pid 2>/dev/null || break; sleep 1; done
kill -0 $pid 2>/dev/null && { echo "up_killed=1"; kill -KILL -$pid; }
exit 0
'

# --- commands ---------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
mkdir -p "$VM_DIR"
chmod 0700 "$VM_DIR"

case "$ACTION" in
  ssh)
    vm_running || die "no VM is running" "start one: $0 --keep-running"
    tty=()
    [ -t 0 ] && tty=(-t)
    exec ssh "${SSH_OPTS[@]}" "${tty[@]}" root@127.0.0.1 "$@"
    ;;
  stop)
    shutdown_vm
    exit 0
    ;;
  resume)
    exec 9>"$VM_DIR/.lock"
    flock -n 9 || die "a vm-check runs on $VM_DIR"
    [ -f "$RUN_DISK" ] || die "no disk of an earlier check at $RUN_DISK" "run a check first"
    boot "$RUN_DISK"
    log "the VM of the last check runs: $0 ssh | $0 stop"
    exit 0
    ;;
esac

exec 9>"$VM_DIR/.lock"
flock -n 9 || die "another vm-check runs on $VM_DIR"

commit=$(git -C "$REPO" rev-parse --verify --quiet "$REF^{commit}") || die "'$REF' is not a commit of $REPO"
short=$(git -C "$REPO" rev-parse --short "$commit")
RESULTS=$VM_DIR/results/$(date -u +%Y%m%dT%H%M%SZ)-$short
mkdir -p "$RESULTS"
log "vm-check of $REF ($commit); results in $RESULTS"
record "ref: $REF $commit ($(git -C "$REPO" log -1 --format=%s "$commit"))"
record "date: $(date -u +%FT%TZ)"
total_start=$(now_ms)
trap 'echo "vm-check: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR
trap 'rc=$?; remove_build_work; if [ "$KEEP_RUNNING" = 0 ]; then shutdown_vm; fi; exit $rc' EXIT

host_packages

if [ "$REBUILD_IMAGE" = 1 ] || [ ! -f "$BASE" ] || ! grep -qx "recipe=$IMAGE_RECIPE" "$VM_DIR/base.info" 2>/dev/null; then
  build_image
fi

# The provisioned overlay counts only once its provisioning succeeded (provisioned.info).
if [ "$REPROVISION" = 1 ] || [ ! -f "$VM_DIR/provisioned.info" ] || [ ! -f "$PROVISIONED" ]; then
  rm -f "$PROVISIONED" "$VM_DIR/provisioned.info" "$RUN_DISK"
  qemu-img create -q -f qcow2 -F qcow2 -b "$BASE" "$PROVISIONED"
  step "boot (provisioning overlay)"
  boot "$PROVISIONED"
  done_step
  copy_ref "$commit"
  step "provision (scripts/provision.sh in the VM)"
  provision_in_guest "$RESULTS/provision.log" || {
    tail -20 "$RESULTS/provision.log" >&2
    die "provisioning failed in the VM" "$RESULTS/provision.log"
  }
  done_step
  # The kept state holds no copy of the code: each check copies its own ref.
  vm_ssh "rm -rf $GUEST_REPO; apt-get clean; fstrim -a" >/dev/null 2>&1 || true
  step "shutdown (provisioning overlay)"
  shutdown_vm
  done_step
  printf 'ref=%s\nprovisioned=%s\n' "$commit" "$(date -u +%FT%TZ)" >"$VM_DIR/provisioned.info"
fi
record "provisioned state: $(tr '\n' ' ' <"$VM_DIR/provisioned.info")"

# Each check runs on a fresh overlay of the provisioned state; it stays until the next check for
# a look after the fact (boot it with --keep-running ... or qemu by hand).
rm -f "$RUN_DISK"
qemu-img create -q -f qcow2 -F qcow2 -b "$PROVISIONED" "$RUN_DISK"
step "boot"
boot "$RUN_DISK"
done_step
copy_ref "$commit"

step "provision (re-run of the ref's scripts/provision.sh)"
provision_in_guest "$RESULTS/provision-rerun.log" || {
  tail -20 "$RESULTS/provision-rerun.log" >&2
  die "provisioning failed in the VM" "$RESULTS/provision-rerun.log"
}
done_step
guest_facts | tee "$RESULTS/guest.txt" | sed 's/^/    /'
cat "$RESULTS/guest.txt" >>"$RESULTS/summary.txt"

# The ref's own way (what up.sh runs) when it has one: how dependencies are installed is the ref's.
step "npm dependencies"
vm_ssh "cd $GUEST_REPO && if [ -f scripts/npm-deps.sh ]; then bash scripts/npm-deps.sh; else npm ci --no-audit --no-fund; fi" \
  >"$RESULTS/npm-ci.log" 2>&1 || die "installing npm dependencies failed in the VM" "$RESULTS/npm-ci.log"
done_step

# A ref with a build (`npm run build`: tsc into dist/, which the bin runs) builds as up.sh does.
step "build"
vm_ssh "cd $GUEST_REPO && if node -e \"process.exit(require('./package.json').scripts?.build ? 0 : 1)\"; then npm run --silent build; else echo 'no build script: nothing to build'; fi" \
  >"$RESULTS/build.log" 2>&1 || die "npm run build failed in the VM" "$RESULTS/build.log"
done_step

step "initless doctor"
doctor_rc=0
vm_ssh "cd $GUEST_REPO && npx initless doctor" >"$RESULTS/doctor.txt" 2>&1 || doctor_rc=$?
done_step "exit code $doctor_rc"
sed 's/^/    | /' "$RESULTS/doctor.txt"
record "doctor: exit code $doctor_rc"

step "cold start of hello-node (initless up + requests through the gateway)"
vm_ssh "bash -s" <<<"$COLD_START_SCRIPT" >"$RESULTS/cold-start.txt" 2>&1 || true
vm_ssh 'cd /root/vm-check && tar -cf - up.log cold.* warm.* 2>/dev/null' | tar -C "$RESULTS" -xf - 2>/dev/null || true
done_step
while IFS= read -r line; do record "cold start: $line"; done <"$RESULTS/cold-start.txt"
for n in cold warm; do
  [ -f "$RESULTS/$n.headers" ] || continue
  record "$n: $(head -1 "$RESULTS/$n.headers" | tr -d '\r')"
  record "$n: $(grep -i '^server-timing:' "$RESULTS/$n.headers" | tr -d '\r' || echo 'no Server-Timing header')"
  record "$n body: $(head -c 300 "$RESULTS/$n.body" 2>/dev/null)"
done
# The executor's own account of the restore (the path it took and its phases).
grep -E '^\[executor\].*(restor|runc|criu|cgroup|error|ERR_)' "$RESULTS/up.log" 2>/dev/null | head -40 \
  >"$RESULTS/executor-restore.txt" || true

if [ "$KEEP_RUNNING" = 0 ]; then
  step "shutdown"
  shutdown_vm
  done_step
else
  log "the VM keeps running: $0 ssh | $0 stop"
fi
record "total: $(($(now_ms) - total_start)) ms"
log "results: $RESULTS"
