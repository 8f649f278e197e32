/**
 * Why an instance ends. Checked on every reaper tick for each live instance: one whose process is
 * gone has died; one still running that hit its pids limit or filled its writable layer is
 * recycled (stopped, so that the next request gets a fresh restore), because what follows those is
 * undefined: a fork bomb keeps forking at the limit and a full rootfs stays full. An OOM kill is
 * reported the same way even when it hit a child process and the main one lives on.
 */
import type { DeathReason } from '../../shared/instance-deaths.ts'
import type { SandboxLimitEvents } from '../sandbox/sandbox.ts'

export interface Ending {
  readonly reason: DeathReason
  /** What was seen (logged, recorded, shown in the problem's detail). */
  readonly detail: string
}

/**
 * The reason an instance ends, or undefined while it lives within its limits. A refused fork
 * ranks first: a fork bomb can also drive the memory cgroup into the OOM killer, and its cause is
 * the bomb. `events` is undefined where none can be read (a container Docker runs).
 */
export function endingOf(alive: boolean, events: SandboxLimitEvents | undefined): Ending | undefined {
  if (events && events.pidsMax > 0)
    return { reason: 'pids-limit', detail: `pids limit reached (${events.pidsMax} forks refused)` }
  if (events && events.oomKills > 0)
    return { reason: 'oom-killed', detail: `memory limit: ${events.oomKills} process(es) OOM-killed` }
  if (events?.diskFull) return { reason: 'disk-full', detail: 'writable layer full (disk limit)' }
  if (!alive) return { reason: 'exited', detail: 'the process exited' }
  return undefined
}
