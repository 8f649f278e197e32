# Kernel settings restores are faster with, sourced by provision.sh. Skipped with
# INITLESS_KERNEL_TUNING=0 (the operator keeps the host as it is; `initless doctor` then advises).
# scripts/host-tuning.test.ts runs it against files of its own.
#
# Expedited RCU grace periods: every restore moves its tasks into a cgroup v2 cgroup and CRIU
# mounts and unmounts; each of those waits for an RCU grace period, a few scheduler ticks (~8 ms
# at HZ 250) unless expedited (tens of microseconds, at the price of an IPI to every CPU per grace
# period). Measured: hello-node's CRIU run p50 ~38 -> ~20 ms (bench/README.md, "RCU grace periods").
# The switch is not a sysctl and resets at boot: on systemd hosts a tmpfiles.d entry sets it at
# every boot; elsewhere running provisioning again (scripts/up.sh does) sets it.

RCU_EXPEDITED_FILE=${INITLESS_RCU_EXPEDITED_FILE:-/sys/kernel/rcu_expedited}
TMPFILES_DIR=${INITLESS_TMPFILES_DIR:-/etc/tmpfiles.d}

# tune_kernel: prints what it did (one line).
tune_kernel() {
  if [ "${INITLESS_KERNEL_TUNING:-1}" = 0 ]; then
    echo "skipped (INITLESS_KERNEL_TUNING=0); rcu_expedited $(cat "$RCU_EXPEDITED_FILE" 2>/dev/null || echo absent)"
    return 0
  fi
  if [ ! -e "$RCU_EXPEDITED_FILE" ]; then
    echo "this kernel has no $RCU_EXPEDITED_FILE: nothing to set"
    return 0
  fi
  local was; was=$(cat "$RCU_EXPEDITED_FILE")
  # A container's read-only /sys refuses: provisioning goes on, `initless doctor` advises.
  if [ "$was" != 1 ] && ! { echo 1 >"$RCU_EXPEDITED_FILE"; } 2>/dev/null; then
    echo "could not write $RCU_EXPEDITED_FILE (read-only?): RCU grace periods left normal"
    return 0
  fi
  local persisted=""
  if has_systemd; then
    local want="w $RCU_EXPEDITED_FILE - - - - 1"
    mkdir -p "$TMPFILES_DIR"
    if [ "$(cat "$TMPFILES_DIR/initless.conf" 2>/dev/null)" != "$want" ]; then
      printf '%s\n' "$want" >"$TMPFILES_DIR/initless.conf"
    fi
    persisted=", at every boot through $TMPFILES_DIR/initless.conf"
  fi
  if [ "$was" = 1 ]; then echo "RCU grace periods already expedited$persisted"; else
    echo "RCU grace periods expedited (rcu_expedited 0 -> 1)$persisted"
  fi
}
