/**
 * The gateway's side of instance deaths (shared/instance-deaths.ts): a request whose instance
 * failed under it learns why (the executor records the reason within a reap interval), and a
 * request that ran past its timeout has its instance recycled: the death is recorded as
 * `request-timeout` and the instance's registry record removed, which makes its executor stop it
 * (reaper: no longer in the registry) and every gateway route around it.
 */
import { DEATH_REPORT_WAIT_MS, type InstanceDeath, type InstanceDeaths } from '../shared/instance-deaths.ts'
import type { InstanceRegistry } from '../shared/registry.ts'

export interface DeathReports {
  /** The recorded death of an instance, waiting up to `waitMs` for its executor to record it. */
  reasonFor(id: string): Promise<InstanceDeath | undefined>
  /** Record a request timeout on an instance and take it out of service. */
  recycle(fn: string, id: string, detail: string): Promise<void>
}

const POLL_MS = 100

export function createDeathReports(deps: {
  readonly deaths: Pick<InstanceDeaths, 'get' | 'record'>
  readonly registry: Pick<InstanceRegistry, 'remove'>
  readonly now?: () => number
  readonly waitMs?: number
}): DeathReports {
  const now = deps.now ?? Date.now
  const waitMs = deps.waitMs ?? DEATH_REPORT_WAIT_MS
  return {
    async reasonFor(id) {
      const until = now() + waitMs
      for (;;) {
        const death = await deps.deaths.get(id).catch(() => undefined)
        if (death || now() >= until) return death
        await new Promise((resolve) => setTimeout(resolve, POLL_MS))
      }
    },
    async recycle(fn, id, detail) {
      await deps.deaths.record({ id, fn, reason: 'request-timeout', detail, at: now() })
      await deps.registry.remove(fn, id)
    },
  }
}
