/**
 * What a function leaves on this host once versions are dropped (retention) or the function is
 * deleted: snapshots, images, unpacked build contexts and, after a delete, its instance keys.
 */
import type { Logger } from 'pino'
import { errorMessage } from '../../shared/errors.ts'
import type { FunctionRecord, FunctionRegistry } from '../../shared/function-registry.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import type { DockerEngine, ImageConfig } from '../adapters/docker.ts'
import type { Baker } from '../snapshots/bake.ts'
import { IMAGE_REPO_PREFIX } from '../snapshots/build.ts'
import type { SnapshotStore } from '../snapshots/snapshot-store.ts'
import type { FunctionSource } from './function-source.ts'

export interface CollectDeps {
  readonly source: Pick<FunctionSource, 'materialize' | 'removeContexts'>
  readonly registry: Pick<InstanceRegistry, 'forget'>
  readonly store: Pick<SnapshotStore, 'retire' | 'remove' | 'snapshotKey'>
  readonly docker: Pick<DockerEngine, 'imageRefs' | 'removeImage'>
  readonly baker: Pick<Baker, 'identity'>
  readonly functions: Pick<FunctionRegistry, 'changeHolder'>
  readonly logger: Logger
}

/** Snapshots younger than this are never retired: a bake just committed is not recorded yet (ms). */
const RETIRE_MIN_AGE_MS = 10 * 60_000

/**
 * A deploy of `fn` is under way: a version is pending and the function's change lock, which the
 * deploy holds until it has recorded its result, is taken. A pending version without the lock is
 * one whose deploy died (its gateway or executor went away): it does not hold collection back.
 * When Redis does not answer, the deploy is assumed to run (collecting later loses nothing).
 */
async function isDeploying(deps: CollectDeps, fn: string, record: FunctionRecord): Promise<boolean> {
  if (!record.versions.some((v) => v.state === 'pending')) return false
  return deps.functions.changeHolder(fn).then(
    (holder) => holder !== undefined,
    (err: unknown) => {
      deps.logger.warn({ fn, err: errorMessage(err) }, 'change lock not readable; collection deferred')
      return true
    },
  )
}

/**
 * Remove snapshots, images and contexts of versions the record no longer keeps. While a deploy is
 * under way its image may be built but not recorded yet, and its snapshot may be one already on
 * disk (same inputs: its bake finds that one instead of baking again, e.g. every function after the
 * registry was lost). So snapshots and images wait until the deploy has recorded its own: the
 * next sync of the function collects them (lifecycle.ts: its activation, or any change of the
 * active version or of the number of versions).
 */
export async function collectVersions(deps: CollectDeps, fn: string, record: FunctionRecord): Promise<void> {
  const deploying = await isDeploying(deps, fn, record)
  const retired: string[] = []
  const images: string[] = []
  if (!deploying) {
    const keepKeys = new Set<string>()
    const keepTags = new Set<string>()
    for (const v of record.versions) {
      if (!v.image) continue
      keepTags.add(v.image.tag)
      if (v.image.digest) keepTags.add(v.image.digest)
      // The version's own folder: a seccomp profile file in it is part of the snapshot's identity.
      const def = await deps.source.materialize(fn, v)
      const identity = await deps.baker.identity(def, { id: v.image.id } as ImageConfig)
      keepKeys.add(deps.store.snapshotKey(identity))
    }
    retired.push(...(await deps.store.retire(fn, keepKeys, RETIRE_MIN_AGE_MS)))
    const repo = `${IMAGE_REPO_PREFIX}${fn}`
    for (const ref of await deps.docker.imageRefs(repo)) {
      if (keepTags.has(ref) || ref === `${repo}:latest`) continue
      await deps.docker.removeImage(ref)
      images.push(ref)
    }
  }
  const contexts = await deps.source.removeContexts(fn, new Set(record.versions.map((v) => v.version)))
  if (retired.length || images.length || contexts.length)
    deps.logger.info({ fn, snapshots: retired, images, contexts }, 'dropped versions collected')
}

/** After a delete (its instances stopped): everything of the function on this host, then its keys. */
export async function removeFunctionFiles(deps: CollectDeps, fn: string): Promise<void> {
  await deps.store.remove(fn)
  const repo = `${IMAGE_REPO_PREFIX}${fn}`
  for (const ref of await deps.docker.imageRefs(repo)) await deps.docker.removeImage(ref)
  await deps.source.removeContexts(fn, new Set())
  await deps.registry.forget(fn)
  deps.logger.info({ fn }, 'deleted function removed from this host')
}
