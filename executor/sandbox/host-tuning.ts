/**
 * Host kernel settings that restores are faster with, read (never written) by initless: the
 * host's operator sets them (scripts/provision.sh does, unless INITLESS_KERNEL_TUNING=0).
 *
 * RCU grace periods: every restore moves its tasks into a cgroup v2 cgroup (the cgroup threadgroup
 * lock's writer side waits for a grace period unless one just passed) and CRIU mounts and
 * unmounts (mount namespace teardown waits for one too). A normal grace period takes a few
 * scheduler ticks (here HZ 250: ~8 ms each); an expedited one, tens of microseconds, at the price
 * of an IPI to every CPU per grace period. Measured (bench/README.md, "RCU grace periods"):
 * hello-node's CRIU run p50 ~38 -> ~20 ms, its cold start through the gateway 60-62 -> 43-47 ms.
 */
import { readFileSync } from 'node:fs'

export const RCU_EXPEDITED = '/sys/kernel/rcu_expedited'

/**
 * Whether the kernel expedites RCU grace periods; undefined when the kernel has no such switch.
 * Synchronous: a sysfs attribute, read at once (the benchmarks record it with their environment).
 */
export function readRcuExpedited(file = RCU_EXPEDITED): boolean | undefined {
  try {
    return readFileSync(file, 'utf8').trim() !== '0'
  } catch {
    return undefined
  }
}
