/**
 * A function's preparation: its image, and its snapshot unless it always boots. Concurrent demand
 * for one function version (one name and folder) shares one build and bake; the last preparation
 * is kept for cold starts.
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
  /** A snapshot the bake found on disk rather than made (its checksums are not known good yet). */
  readonly found?: (fn: FunctionDef, snapshot: Snapshot) => void
}

export interface Preparations {
  /** Build and bake when missing; callers arriving meanwhile share the running preparation. */
  prepare(fn: FunctionDef): Promise<Prepared>
  /**
   * The preparation a cold start uses: the last one while its snapshot is still usable (`recheck`:
   * prepare again off the cold-start path), else a fresh one.
   */
  current(fn: FunctionDef): Promise<{ prep: Prepared; recheck: boolean }>
  /** The last preparation's snapshot. */
  snapshot(fn: string): Snapshot | undefined
  /** Forget the last preparation when its snapshot is `snapshot` (it turned out broken). */
  forget(fn: string, snapshot: Snapshot): void
}

/** Create the preparation cache of one instance manager. */
export function createPreparations(deps: PreparationsDeps): Preparations {
  const running = new Map<string, Promise<Prepared>>()
  const last = new Map<string, { def: FunctionDef; prep: Prepared }>()

  async function build(fn: FunctionDef): Promise<{ prep: Prepared; found: boolean }> {
    const built = await deps.builder.build(fn)
    if (fn.manifest.restore.policy === 'boot')
      return { prep: { image: built.image, snapshot: undefined }, found: false }
    const { snapshot, baked } = await deps.baker.bake(fn, built.image)
    return { prep: { image: built.image, snapshot }, found: !baked }
  }

  function prepare(fn: FunctionDef): Promise<Prepared> {
    // By name and folder: two functions built from one folder (a variant with another manifest)
    // have snapshots of their own, and sharing a preparation would hand one the other's.
    const key = `${fn.name}\0${fn.dir}`
    let p = running.get(key)
    if (!p) {
      const made = build(fn)
        .then((r) => {
          last.set(fn.name, { def: fn, prep: r.prep })
          return r
        })
        .finally(() => running.delete(key))
      // Once this preparation is the last one: what `found` does about it (forget, prepare again)
      // then acts on it rather than on one still running.
      void made.then(
        ({ prep, found }) => found && prep.snapshot && deps.found?.(fn, prep.snapshot),
        () => undefined,
      )
      p = made.then((r) => r.prep)
      running.set(key, p)
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
    snapshot: (fn) => last.get(fn)?.prep.snapshot,
    forget(fn, snapshot) {
      const current = last.get(fn)?.prep.snapshot
      if (current?.dir === snapshot.dir && current.meta.createdAt === snapshot.meta.createdAt) last.delete(fn)
    },
  }
}
