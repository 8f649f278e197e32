/**
 * What the instance manager does about snapshots that turn out unusable: one that fails to restore,
 * or whose checksums do not match (found on disk, or by the scheduled scrub), is marked broken,
 * forgotten as the function's current preparation and baked again in the background.
 */
import type { Logger } from 'pino'
import { errorMessage } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import type { Snapshot, SnapshotStore } from '../snapshots/snapshot-store.ts'
import type { Preparations } from './preparations.ts'

export interface ScrubResult {
  readonly fn: string
  readonly ok: boolean
  readonly ms: number
  readonly problem?: string
}

export interface SnapshotHealth {
  /** Mark the snapshot broken and re-bake the function in the background. */
  failed(fn: FunctionDef, snapshot: Snapshot, err: unknown): Promise<void>
  /** Check a snapshot found on disk now, off the first restore's path (which waits for it). */
  checkFound(fn: FunctionDef, snapshot: Snapshot): void
  /** Check every current snapshot's checksums, one at a time; a corrupt one fails as above. */
  scrub(): Promise<ScrubResult[]>
}

export function createSnapshotHealth(deps: {
  readonly store: Pick<SnapshotStore, 'markBroken' | 'verify' | 'scrub'>
  readonly preparations: Pick<Preparations, 'prepare' | 'snapshot' | 'forget'>
  readonly functions: () => readonly FunctionDef[]
  readonly logger: Logger
}): SnapshotHealth {
  const log = deps.logger

  async function failed(fn: FunctionDef, snapshot: Snapshot, err: unknown): Promise<void> {
    log.error(
      { fn: fn.name, snapshot: snapshot.meta.key, err: errorMessage(err) },
      'snapshot unusable; re-baking',
    )
    await deps.store.markBroken(snapshot, errorMessage(err))
    deps.preparations.forget(fn.name, snapshot)
    void deps.preparations
      .prepare(fn)
      .catch((e: unknown) => log.error({ fn: fn.name, err: errorMessage(e) }, 're-bake failed'))
  }

  return {
    failed,

    checkFound(fn, snapshot) {
      void deps.store.verify(snapshot).catch((err: unknown) => failed(fn, snapshot, err))
    },

    async scrub() {
      const results: ScrubResult[] = []
      for (const fn of deps.functions()) {
        const snapshot = deps.preparations.snapshot(fn.name)
        if (!snapshot) continue
        const t0 = performance.now()
        try {
          await deps.store.scrub(snapshot)
          results.push({ fn: fn.name, ok: true, ms: performance.now() - t0 })
        } catch (err) {
          results.push({ fn: fn.name, ok: false, ms: performance.now() - t0, problem: errorMessage(err) })
          await failed(fn, snapshot, err)
        }
      }
      return results
    },
  }
}
