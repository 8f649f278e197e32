/**
 * Every bake of a registry version on this host is recorded in the function registry
 * (`bakedOn[host]`): `initless functions` shows which hosts hold a snapshot of each version, and
 * the record is written before any instance of that version restores from it here.
 */
import type { Logger } from 'pino'
import { errorMessage } from '../../shared/errors.ts'
import type { FunctionRegistry } from '../../shared/function-registry.ts'
import type { Baker } from '../snapshots/bake.ts'

export function recordBakes(
  baker: Baker,
  deps: {
    readonly functions: Pick<FunctionRegistry, 'markBaked'>
    readonly hostId: string
    readonly logger: Logger
    readonly now?: () => number
  },
): Baker {
  const now = deps.now ?? Date.now
  /**
   * Bakes this process recorded (`fn\0version\0snapshotKey`): a bake that finds its snapshot on
   * disk (every preparation after the first) records nothing again. Each record is an event every
   * gateway and executor re-reads the function for.
   */
  const recorded = new Set<string>()
  return {
    ...baker,
    async bake(fn, image, opts) {
      const result = await baker.bake(fn, image, opts)
      const version = fn.version
      if (version === undefined) return result
      const snapshotKey = result.snapshot.meta.key
      const key = `${fn.name}\0${version}\0${snapshotKey}`
      if (recorded.has(key)) return result
      const isRecorded = await deps.functions
        .markBaked(fn.name, version, deps.hostId, { at: now(), snapshotKey })
        .catch((err: unknown) => {
          deps.logger.warn({ fn: fn.name, version, err: errorMessage(err) }, 'bake not recorded')
          return false
        })
      if (isRecorded) {
        recorded.add(key)
        deps.logger.info({ fn: fn.name, version, snapshotKey }, 'bake recorded')
      }
      return result
    },
  }
}
