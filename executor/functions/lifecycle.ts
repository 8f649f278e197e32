/**
 * An executor following the function registry: when a function's active version changes, this
 * host's definition of it switches (new restores run the new version), and its instances of any
 * other version are drained: marked `draining` (gateways stop sending them requests), given
 * the drain grace for every gateway to hear of it, then stopped once the requests the gateways
 * still had on them are done (their summed count in the instance registry), at the latest after
 * the function's request timeout. Instances whose sandbox was made for another egress policy than
 * the active manifest's (`network.egress` is a live field: a deploy changes it without a new
 * version) are drained the same way, so none keeps the old policy. A deleted function is drained
 * the same way, then its snapshots, images, build contexts and registry keys are removed. Versions
 * dropped by retention lose their snapshots, images and contexts here. Draining is drainer.ts,
 * removing files collect.ts.
 */
import type { Logger } from 'pino'
import { errorMessage } from '../../shared/errors.ts'
import { activeVersion, type FunctionRecord, type FunctionRegistry } from '../../shared/function-registry.ts'
import type { FunctionChange, FunctionWatcher } from '../../shared/function-watcher.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import type { Baker } from '../snapshots/bake.ts'
import type { DockerEngine } from '../adapters/docker.ts'
import { collectVersions, removeFunctionFiles } from './collect.ts'
import { createDrainer, type Drainer } from './drainer.ts'
import { vethEgress } from '../adapters/network.ts'
import type { FunctionSource } from './function-source.ts'
import type { InstanceManager } from '../instances/instances.ts'
import type { SnapshotStore } from '../snapshots/snapshot-store.ts'

export interface LifecycleDeps {
  readonly hostId: string
  readonly watcher: Pick<FunctionWatcher, 'get' | 'list' | 'onChange'>
  readonly source: FunctionSource
  readonly registry: Pick<InstanceRegistry, 'list' | 'markDraining' | 'inflight' | 'forget'>
  readonly instances: Pick<InstanceManager, 'stop' | 'live' | 'fillPools' | 'prepare'>
  readonly store: Pick<SnapshotStore, 'retire' | 'remove' | 'snapshotKey'>
  readonly docker: Pick<DockerEngine, 'imageRefs' | 'removeImage'>
  readonly baker: Pick<Baker, 'identity'>
  /** The function registry: whether a deploy holds a function's change lock. */
  readonly functions: Pick<FunctionRegistry, 'changeHolder'>
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

/**
 * Drain this host's instances of `fn` that do not run its active version, or run it under another
 * egress policy than the active manifest's (all when deleted).
 */
async function drainStale(
  deps: Pick<LifecycleDeps, 'hostId' | 'registry' | 'instances'>,
  drainer: Pick<Drainer, 'drain'>,
  fn: string,
  record: FunctionRecord | undefined,
): Promise<void> {
  const active = activeVersion(record)
  const egress = active?.manifest.network.egress
  const live = deps.instances.live()
  const otherEgress = new Set(
    live
      .filter((i) => {
        const veth = i.sandbox?.netns.veth
        return veth !== undefined && egress !== undefined && vethEgress(veth) !== egress
      })
      .map((i) => i.id),
  )
  const mine = new Set(live.map((i) => i.id))
  const stale = (await deps.registry.list(fn)).filter(
    (r) =>
      mine.has(r.id) &&
      r.hostId === deps.hostId &&
      r.state !== 'starting' &&
      (active === undefined || r.version !== active.version || otherEgress.has(r.id)),
  )
  const timeoutMs =
    active?.manifest.timeouts.request ?? record?.versions[0]?.manifest.timeouts.request ?? 60_000
  await Promise.all(stale.map((r) => drainer.drain(r, timeoutMs)))
}

export function createLifecycle(deps: LifecycleDeps): Lifecycle {
  const log = deps.logger.child({ module: 'lifecycle' })
  const drainer = createDrainer({
    registry: deps.registry,
    instances: deps.instances,
    logger: log,
    drainGraceMs: deps.drainGraceMs,
    pollMs: deps.pollMs ?? 100,
    sleep: deps.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms))),
  })
  const collect = { ...deps, logger: log }
  /** Per function, the chain of sync steps: one at a time, in event order. */
  const chains = new Map<string, Promise<void>>()
  /** The version each function's preparation was last started for on this host. */
  const prepared = new Map<string, string>()
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

  /** After a delete: stop what is not draining already, then remove the function's files and keys. */
  const removeFunction = async (fn: string) => {
    await Promise.all(
      deps.instances
        .live()
        .filter((i) => i.fn === fn && !drainer.isDraining(i.id))
        .map((i) => deps.instances.stop(i.id, 'function deleted')),
    )
    await removeFunctionFiles(collect, fn)
  }

  const sync = (fn: string) =>
    enqueue(fn, async () => {
      const record = deps.watcher.get(fn)
      const active = activeVersion(record)
      if (active) {
        const def = await deps.source.materialize(fn, active)
        deps.source.setActive(fn, def)
        // Every host bakes the active version now (pulling its image by digest when it was
        // published), not at its first restore; restores that come meanwhile wait for this bake.
        if (prepared.get(fn) !== active.version) {
          prepared.set(fn, active.version)
          void deps.instances.prepare(def).catch((err: unknown) => {
            if (prepared.get(fn) === active.version) prepared.delete(fn)
            log.error({ fn, err: errorMessage(err) }, 'prepare failed')
          })
        }
        void deps.instances.fillPools()
      } else {
        deps.source.setActive(fn, undefined)
        prepared.delete(fn)
      }
      await drainStale(deps, drainer, fn, record)
      // The drain may have taken up to a request timeout: collect by the record as it is now
      // (a deploy that started meanwhile must see its snapshot kept).
      const current = deps.watcher.get(fn)
      if (!current) await removeFunction(fn)
      else await collectVersions(collect, fn, current)
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
            await drainStale(deps, drainer, change.fn, change.after)
          }
        })
    }
  }

  const sweep = () => {
    for (const record of deps.watcher.list())
      if (!chains.has(record.name))
        void enqueue(record.name, () => drainStale(deps, drainer, record.name, deps.watcher.get(record.name)))
  }

  return {
    async start() {
      stopListening = deps.watcher.onChange(onChange)
      await Promise.all(deps.watcher.list().map((r) => sync(r.name)))
      timer = setInterval(sweep, deps.sweepIntervalMs ?? 2000)
      timer.unref()
    },
    async settled() {
      while (chains.size || drainer.running().length)
        await Promise.all([...chains.values(), ...drainer.running()])
    },
    async close() {
      isClosed = true
      clearInterval(timer)
      stopListening?.()
      await drainer.close()
    },
  }
}
