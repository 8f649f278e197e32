/**
 * An executor following the function registry: when a function's active version changes, this
 * host's definition of it switches (new restores run the new version), and its instances of any
 * other version are drained: marked `draining` (gateways stop sending them requests), given
 * the drain grace for every gateway to hear of it, then stopped once the requests the gateways
 * still had on them are done (their summed count in the instance registry), at the latest after
 * the function's request timeout. Instances whose sandbox was made for another egress policy than
 * the active manifest's (`network.egress` is a live field: a deploy changes it without a new
 * version) are drained the same way, so none keeps the old policy. A deleted function is drained
 * the same way, then its snapshots,
 * images, build contexts and registry keys are removed. Versions dropped by retention lose their
 * snapshots, images and contexts here.
 */
import type { Logger } from 'pino'
import { errorMessage } from '../../shared/errors.ts'
import { activeVersion, type FunctionRecord } from '../../shared/function-registry.ts'
import type { FunctionChange, FunctionWatcher } from '../../shared/function-watcher.ts'
import type { InstanceRecord } from '../../shared/contracts.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import type { Baker } from '../snapshots/bake.ts'
import { IMAGE_REPO_PREFIX } from '../snapshots/build.ts'
import type { DockerEngine, ImageConfig } from '../adapters/docker.ts'
import { vethEgress } from '../adapters/network.ts'
import type { FunctionSource } from './function-source.ts'
import type { InstanceManager } from '../instances/instances.ts'
import type { SnapshotStore } from '../snapshots/snapshot-store.ts'

export interface LifecycleDeps {
  readonly hostId: string
  readonly watcher: Pick<FunctionWatcher, 'get' | 'list' | 'onChange'>
  readonly source: FunctionSource
  readonly registry: Pick<InstanceRegistry, 'list' | 'markDraining' | 'inflight' | 'forget'>
  readonly instances: Pick<InstanceManager, 'stop' | 'live' | 'fillPools'>
  readonly store: Pick<SnapshotStore, 'retire' | 'remove' | 'snapshotKey'>
  readonly docker: Pick<DockerEngine, 'imageRefs' | 'removeImage'>
  readonly baker: Pick<Baker, 'identity'>
  readonly logger: Logger
  /** How long gateways get to hear that an instance drains before its in-flight count is trusted (ms). */
  readonly drainGraceMs: number
  /** Stale-version sweep interval (ms): catches restores of the old version that finish late. */
  readonly sweepIntervalMs?: number
  /** Poll interval of a drain's in-flight count (ms). */
  readonly pollMs?: number
  readonly sleep?: (ms: number) => Promise<void>
}

export interface Lifecycle {
  /** Apply every function's current record once (start-up), then follow changes. */
  start(): Promise<void>
  /** Resolves when the drains and clean-ups under way are done. */
  settled(): Promise<void>
  close(): Promise<void>
}

/** Snapshots younger than this are never retired: a bake just committed is not recorded yet (ms). */
const RETIRE_MIN_AGE_MS = 10 * 60_000

export function createLifecycle(deps: LifecycleDeps): Lifecycle {
  const log = deps.logger.child({ module: 'lifecycle' })
  const sleep = deps.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)))
  const pollMs = deps.pollMs ?? 100
  /** Per function, the chain of sync steps: one at a time, in event order. */
  const chains = new Map<string, Promise<void>>()
  const draining = new Map<string, Promise<void>>()
  let timer: NodeJS.Timeout | undefined
  let stopListening: (() => void) | undefined
  let isClosed = false

  const enqueue = (fn: string, step: () => Promise<void>) => {
    const next = (chains.get(fn) ?? Promise.resolve())
      .then(step)
      .catch((err: unknown) => log.error({ fn, err: errorMessage(err) }, 'function sync failed'))
    chains.set(fn, next)
    void next.finally(() => chains.get(fn) === next && chains.delete(fn))
    return next
  }

  const drain = (r: InstanceRecord, requestTimeoutMs: number): Promise<void> => {
    let p = draining.get(r.id)
    if (p) return p
    p = (async () => {
      const started = Date.now()
      await deps.registry.markDraining(r.fn, r.id)
      log.info({ fn: r.fn, id: r.id, version: r.version ?? null }, 'instance draining')
      await sleep(deps.drainGraceMs)
      const deadline = started + deps.drainGraceMs + requestTimeoutMs
      while (
        !isClosed &&
        Date.now() < deadline &&
        (await deps.registry.inflight(r.fn, r.id).catch(() => 0)) > 0
      )
        await sleep(pollMs)
      await deps.instances.stop(r.id, 'drained')
      log.info({ fn: r.fn, id: r.id, ms: Date.now() - started }, 'instance drained')
    })()
      .catch((err: unknown) => log.warn({ fn: r.fn, id: r.id, err: errorMessage(err) }, 'drain failed'))
      .finally(() => draining.delete(r.id))
    draining.set(r.id, p)
    return p
  }

  /**
   * Drain this host's instances of `fn` that do not run its active version, or run it under another
   * egress policy (all when deleted).
   */
  const drainStale = async (fn: string, record: FunctionRecord | undefined) => {
    const active = activeVersion(record)
    const egress = active?.manifest.network.egress
    const otherEgress = new Set(
      deps.instances
        .live()
        .filter((i) => {
          const veth = i.sandbox?.netns.veth
          return veth !== undefined && egress !== undefined && vethEgress(veth) !== egress
        })
        .map((i) => i.id),
    )
    const mine = new Set(deps.instances.live().map((i) => i.id))
    const stale = (await deps.registry.list(fn)).filter(
      (r) =>
        mine.has(r.id) &&
        r.hostId === deps.hostId &&
        r.state !== 'starting' &&
        (active === undefined || r.version !== active.version || otherEgress.has(r.id)),
    )
    const timeoutMs =
      active?.manifest.timeouts.request ?? record?.versions[0]?.manifest.timeouts.request ?? 60_000
    await Promise.all(stale.map((r) => drain(r, timeoutMs)))
  }

  /** Remove snapshots, images and contexts of versions the record no longer keeps. */
  const collectVersions = async (fn: string, record: FunctionRecord) => {
    const keepKeys = new Set<string>()
    const keepTags = new Set<string>()
    for (const v of record.versions) {
      if (!v.image) continue
      keepTags.add(v.image.tag)
      const def = { name: fn, dir: '', manifestFile: '', manifest: v.manifest, version: v.version }
      const identity = await deps.baker.identity(def, { id: v.image.id } as ImageConfig)
      keepKeys.add(deps.store.snapshotKey(identity))
    }
    const retired = await deps.store.retire(fn, keepKeys, RETIRE_MIN_AGE_MS)
    const repo = `${IMAGE_REPO_PREFIX}${fn}`
    const images: string[] = []
    // While a deploy is under way its image may be built but not recorded yet.
    const isDeploying = record.versions.some((v) => v.state === 'pending')
    for (const ref of isDeploying ? [] : await deps.docker.imageRefs(repo)) {
      if (keepTags.has(ref) || ref === `${repo}:latest`) continue
      await deps.docker.removeImage(ref)
      images.push(ref)
    }
    const contexts = await deps.source.removeContexts(fn, new Set(record.versions.map((v) => v.version)))
    if (retired.length || images.length || contexts.length)
      log.info({ fn, snapshots: retired, images, contexts }, 'dropped versions collected')
  }

  /** After a delete: everything of the function on this host, then its registry keys. */
  const removeFunction = async (fn: string) => {
    await Promise.all(
      deps.instances
        .live()
        .filter((i) => i.fn === fn && !draining.has(i.id))
        .map((i) => deps.instances.stop(i.id, 'function deleted')),
    )
    await deps.store.remove(fn)
    const repo = `${IMAGE_REPO_PREFIX}${fn}`
    for (const ref of await deps.docker.imageRefs(repo)) await deps.docker.removeImage(ref)
    await deps.source.removeContexts(fn, new Set())
    await deps.registry.forget(fn)
    log.info({ fn }, 'deleted function removed from this host')
  }

  const sync = (fn: string) =>
    enqueue(fn, async () => {
      const record = deps.watcher.get(fn)
      const active = activeVersion(record)
      if (active) {
        deps.source.setActive(fn, await deps.source.materialize(fn, active))
        void deps.instances.fillPools()
      } else deps.source.setActive(fn, undefined)
      await drainStale(fn, record)
      if (!record) await removeFunction(fn)
      else await collectVersions(fn, record)
    })

  const onChange = (change: FunctionChange) => {
    if (isClosed) return
    const was = change.before?.active
    const is = change.after?.active
    if (was !== is || !change.after || change.before?.versions.length !== change.after.versions.length)
      void sync(change.fn)
    else {
      // Live fields changed: the new definition applies from now on; instances and pooled
      // sandboxes made for another egress policy go (drainStale, pools.ts).
      const active = activeVersion(change.after)
      if (active)
        void enqueue(change.fn, async () => {
          deps.source.setActive(change.fn, await deps.source.materialize(change.fn, active))
          if (active.manifest.network.egress !== activeVersion(change.before)?.manifest.network.egress) {
            void deps.instances.fillPools()
            await drainStale(change.fn, change.after)
          }
        })
    }
  }

  const sweep = () => {
    for (const record of deps.watcher.list())
      if (!chains.has(record.name))
        void enqueue(record.name, () => drainStale(record.name, deps.watcher.get(record.name)))
  }

  return {
    async start() {
      stopListening = deps.watcher.onChange(onChange)
      await Promise.all(deps.watcher.list().map((r) => sync(r.name)))
      timer = setInterval(sweep, deps.sweepIntervalMs ?? 2000)
      timer.unref()
    },
    async settled() {
      while (chains.size || draining.size) await Promise.all([...chains.values(), ...draining.values()])
    },
    async close() {
      isClosed = true
      clearInterval(timer)
      stopListening?.()
      await Promise.all([...draining.values()])
    },
  }
}
