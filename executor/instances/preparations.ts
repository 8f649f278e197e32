/**
 * A function's preparation: its image, and its snapshot unless it always boots. Concurrent demand
 * for one function version (one folder) shares one build and bake; the last preparation is kept
 * for cold starts.
 */
import type { FunctionDef } from '../../shared/functions.ts'
import type { ImageConfig } from '../adapters/docker.ts'
import type { Baker } from '../snapshots/bake.ts'
import type { ImageBuilder } from '../snapshots/build.ts'
import type { Snapshot, SnapshotStore } from '../snapshots/snapshot-store.ts'

export interface Prepared {
  readonly image: ImageConfig
  readonly snapshot: Snapshot | undefined
}

export interface PreparationsDeps {
  readonly builder: Pick<ImageBuilder, 'build'>
  readonly baker: Pick<Baker, 'bake'>
  readonly store: Pick<SnapshotStore, 'usable'>
}

export interface Preparations {
  /** Build and bake when missing; callers arriving meanwhile share the running preparation. */
  prepare(fn: FunctionDef): Promise<Prepared>
  /**
   * The preparation a cold start uses: the last one while its snapshot is still usable (`recheck`:
   * prepare again off the cold-start path), else a fresh one.
   */
  current(fn: FunctionDef): Promise<{ prep: Prepared; recheck: boolean }>
  /** Forget the last preparation (its snapshot turned out broken). */
  forget(fn: string): void
}

/** Create the preparation cache of one instance manager. */
export function createPreparations(deps: PreparationsDeps): Preparations {
  const running = new Map<string, Promise<Prepared>>()
  const last = new Map<string, { def: FunctionDef; prep: Prepared }>()

  async function build(fn: FunctionDef): Promise<Prepared> {
    const built = await deps.builder.build(fn)
    if (fn.manifest.restore.policy === 'boot') return { image: built.image, snapshot: undefined }
    const { snapshot } = await deps.baker.bake(fn, built.image)
    return { image: built.image, snapshot }
  }

  function prepare(fn: FunctionDef): Promise<Prepared> {
    let p = running.get(fn.dir)
    if (!p) {
      p = build(fn)
        .then((prep) => {
          last.set(fn.name, { def: fn, prep })
          return prep
        })
        .finally(() => running.delete(fn.dir))
      running.set(fn.dir, p)
    }
    return p
  }

  return {
    prepare,
    // Checking the image and snapshot against the function's files (hash the folder, ask Docker)
    // costs ~7 ms; SnapshotStore.usable is a stat and a small read.
    async current(fn) {
      const kept = last.get(fn.name)
      // A new definition (its manifest changed) is prepared afresh.
      if (kept?.def === fn && (!kept.prep.snapshot || (await deps.store.usable(kept.prep.snapshot))))
        return { prep: kept.prep, recheck: true }
      return { prep: await prepare(fn), recheck: false }
    },
    forget: (fn) => void last.delete(fn),
  }
}
