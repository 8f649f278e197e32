/**
 * The instance manager: everything one executor host runs. It starts instances (choosing the
 * runtime from the function's policy and snapshot, falling back to boot when a snapshot is missing
 * or fails), keeps the registry in step, stops instances, and keeps the pre-started pool filled.
 */
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { RestoreJobData, RestoreJobResult, RuntimeKind } from '../../shared/contracts.ts'
import { InitlessError, errorMessage } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import { processSpecFor, type Baker } from '../snapshots/bake.ts'
import type { ImageBuilder } from '../snapshots/build.ts'
import { killLazyPages } from '../adapters/criu.ts'
import type { DockerCheckpointRuntime } from '../runtimes/docker-checkpoint.ts'
import type { DockerEngine, ImageConfig } from '../adapters/docker.ts'
import { isProcessAlive } from '../adapters/process.ts'
import { ensureImageRootfs } from '../adapters/rootfs.ts'
import {
  chooseRuntime,
  discardPooled,
  type PooledSandbox,
  type Runtime,
  type StartedInstance,
} from '../runtimes/runtimes.ts'
import { sandboxLimits, type Sandbox, type SandboxManager } from '../sandbox/sandbox.ts'
import type { Snapshot, SnapshotStore } from '../snapshots/snapshot-store.ts'

export interface InstanceManagerDeps {
  readonly hostId: string
  readonly stateDir: string
  readonly lazyThreshold: number
  readonly functions: () => readonly FunctionDef[]
  readonly registry: InstanceRegistry
  readonly builder: ImageBuilder
  readonly baker: Baker
  readonly store: SnapshotStore
  readonly docker: DockerEngine
  readonly sandboxes: SandboxManager
  /** `docker` (Docker's checkpoint API) serves only jobs that ask for it; without it they fail. */
  readonly runtimes: Readonly<Record<'lazy' | 'eager' | 'boot', Runtime>> & {
    readonly docker?: DockerCheckpointRuntime
  }
  readonly logger: Logger
}

interface Prepared {
  readonly image: ImageConfig
  readonly snapshot: Snapshot | undefined
}

export interface InstanceManager {
  /** Serve one restore job: start the reserved instance and mark it ready in the registry. */
  start(job: RestoreJobData): Promise<RestoreJobResult>
  /** Stop an instance and release all it holds; removes it from the registry. */
  stop(id: string, reason: string): Promise<void>
  live(): readonly StartedInstance[]
  /** Instances whose process is gone (exited, OOM-killed). */
  dead(): Promise<StartedInstance[]>
  /** Image and snapshot for a function, building and baking when missing. */
  prepare(fn: FunctionDef): Promise<Prepared>
  /** Keep each function's pre-started pool at its manifest's size. */
  fillPools(): Promise<void>
  /** Stop everything (shutdown). */
  stopAll(reason: string): Promise<void>
  /**
   * Check every current snapshot's checksums now (the scheduled scrub), one at a time; a corrupt
   * one is marked broken and re-baked. Resolves with what was found.
   */
  scrub(): Promise<{ fn: string; ok: boolean; ms: number; problem?: string }[]>
  poolSize(fn: string): number
}

/**
 * The sandbox an instance of `fn` is restored into: an overlay over the snapshot's upper dir and
 * the image's rootfs (unpacked once per image), with the manifest's process and limits.
 */
export async function prepareRestoreSandbox(
  deps: Pick<InstanceManagerDeps, 'stateDir' | 'docker' | 'sandboxes'>,
  opts: { id: string; fn: FunctionDef; image: ImageConfig; snapshot: Snapshot },
): Promise<Sandbox> {
  const rootfs = await ensureImageRootfs(deps.stateDir, opts.image.id, (id, dir) =>
    deps.docker.exportRootfs(id, dir),
  )
  const m = opts.fn.manifest
  return deps.sandboxes.prepare({
    id: opts.id,
    fn: opts.fn.name,
    lowers: [opts.snapshot.upperDir, rootfs],
    process: processSpecFor(opts.image, m),
    ...sandboxLimits(m),
    forRestore: true,
  })
}

/** Release all a started instance holds: its lazy-pages daemon, sandbox and container. */
export async function releaseInstance(
  deps: Pick<InstanceManagerDeps, 'docker' | 'sandboxes' | 'runtimes'>,
  inst: StartedInstance,
): Promise<void> {
  // Stopped, never removed: its container holds the checkpoint the next restore starts from.
  if (inst.runtime === 'docker') return deps.runtimes.docker?.stop(inst)
  killLazyPages(inst.lazyDaemon)
  if (inst.sandbox) await deps.sandboxes.destroy(inst.sandbox)
  if (inst.containerId) await deps.docker.removeContainer(inst.containerId)
}

export function createInstanceManager(deps: InstanceManagerDeps): InstanceManager {
  const log = deps.logger.child({ module: 'instances' })
  const live = new Map<string, StartedInstance>()
  const pools = new Map<string, { key: string; sandboxes: PooledSandbox[] }>()
  const preparing = new Map<string, Promise<Prepared>>()
  /** The last preparation of each function: cold starts use it and re-check after (see start). */
  const prepared = new Map<string, { def: FunctionDef; prep: Prepared }>()
  const fills = new Map<string, Promise<void>>()

  function findFn(name: string): FunctionDef {
    const fn = deps.functions().find((f) => f.name === name)
    if (!fn) throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `unknown function '${name}'`)
    return fn
  }

  async function doPrepare(fn: FunctionDef): Promise<Prepared> {
    const built = await deps.builder.build(fn)
    if (fn.manifest.restore.policy === 'boot') return { image: built.image, snapshot: undefined }
    const { snapshot, baked } = await deps.baker.bake(fn, built.image)
    // A snapshot found on disk gets its checksums checked now, off the first restore's path (a
    // restore arriving meanwhile waits for this same check; later ones cost a stat per file).
    if (!baked) void deps.store.verify(snapshot).catch((err: unknown) => snapshotFailed(fn, snapshot, err))
    return { image: built.image, snapshot }
  }

  /**
   * A snapshot that does not restore, or is corrupt, is never tried again: mark it, and re-bake in
   * the background.
   */
  async function snapshotFailed(fn: FunctionDef, snapshot: Snapshot, err: unknown): Promise<void> {
    log.error(
      { fn: fn.name, snapshot: snapshot.meta.key, err: errorMessage(err) },
      'snapshot unusable; re-baking',
    )
    await deps.store.markBroken(snapshot, errorMessage(err))
    const current = prepared.get(fn.name)?.prep.snapshot
    if (current?.dir === snapshot.dir && current.meta.createdAt === snapshot.meta.createdAt)
      prepared.delete(fn.name)
    void prepare(fn).catch((e: unknown) => log.error({ fn: fn.name, err: errorMessage(e) }, 're-bake failed'))
  }

  /** Concurrent demand for one function shares one build/bake. */
  function prepare(fn: FunctionDef): Promise<Prepared> {
    let p = preparing.get(fn.name)
    if (!p) {
      p = doPrepare(fn)
        .then((prep) => {
          prepared.set(fn.name, { def: fn, prep })
          return prep
        })
        .finally(() => preparing.delete(fn.name))
      preparing.set(fn.name, p)
    }
    return p
  }

  /**
   * The preparation a cold start uses. Checking the image and snapshot against the function's
   * files (hash the folder, ask Docker) costs ~7 ms: a start uses the last preparation while its
   * snapshot is still current and intact (SnapshotStore.usable: a stat and a small read), and
   * re-checks once it is done.
   */
  async function preparationFor(fn: FunctionDef): Promise<{ prep: Prepared; recheck: boolean }> {
    const last = prepared.get(fn.name)
    // A new definition (its manifest changed) is prepared afresh.
    if (last?.def === fn && (!last.prep.snapshot || (await deps.store.usable(last.prep.snapshot))))
      return { prep: last.prep, recheck: true }
    return { prep: await prepare(fn), recheck: false }
  }

  const newSandbox = (id: string, fn: FunctionDef, image: ImageConfig, snapshot: Snapshot) =>
    prepareRestoreSandbox(deps, { id, fn, image, snapshot })

  function takePooled(fn: string, snapshot: Snapshot): PooledSandbox | undefined {
    const pool = pools.get(fn)
    if (!pool || pool.key !== snapshot.meta.key) return undefined
    return pool.sandboxes.shift()
  }

  async function startWith(
    kind: RuntimeKind,
    job: RestoreJobData,
    fn: FunctionDef,
    prep: Prepared,
  ): Promise<StartedInstance> {
    if (kind === 'docker') {
      const docker = deps.runtimes.docker
      if (!docker)
        throw new InitlessError('ERR_RESTORE_FAILED', 'the docker runtime is not served by this executor')
      return docker.start({
        instanceId: job.instanceId,
        fn,
        image: prep.image,
        prepare: () =>
          Promise.reject(new InitlessError('ERR_INTERNAL', 'the docker runtime uses no sandbox')),
        hostLabel: deps.hostId,
      })
    }
    const snapshot = prep.snapshot
    const pooled = kind !== 'boot' && snapshot && !job.noPool ? takePooled(fn.name, snapshot) : undefined
    const started = deps.runtimes[kind].start({
      instanceId: job.instanceId,
      fn,
      image: prep.image,
      ...(snapshot ? { snapshot } : {}),
      ...(pooled ? { pooled } : {}),
      prepare: () => {
        if (!snapshot) throw new InitlessError('ERR_SNAPSHOT_NOT_FOUND', `${fn.name}: no snapshot`)
        return newSandbox(job.instanceId, fn, prep.image, snapshot)
      },
      hostLabel: deps.hostId,
    })
    // Refill once this restore is done: preparing a sandbox alongside it would compete for the CPU.
    if (pooled) void started.finally(() => void fillPool(fn)).catch(() => undefined)
    return started
  }

  /** One fill per function at a time; a caller arriving meanwhile waits for the running one. */
  function fillPool(fn: FunctionDef): Promise<void> {
    let p = fills.get(fn.name)
    if (!p) {
      p = doFillPool(fn).finally(() => fills.delete(fn.name))
      fills.set(fn.name, p)
    }
    return p
  }

  async function doFillPool(fn: FunctionDef): Promise<void> {
    const want = fn.manifest.scaling.poolSize
    if (want === 0 || fn.manifest.restore.policy === 'boot') return
    try {
      const prep = await prepare(fn)
      if (!prep.snapshot) return
      let pool = pools.get(fn.name)
      if (pool && pool.key !== prep.snapshot.meta.key) {
        // The snapshot changed: sandboxes layered over the old one are useless.
        for (const p of pool.sandboxes.splice(0))
          await discardPooled(deps.sandboxes, p).catch(() => undefined)
        pool = undefined
      }
      if (!pool) {
        pool = { key: prep.snapshot.meta.key, sandboxes: [] }
        pools.set(fn.name, pool)
      }
      const kind = chooseRuntime(fn.manifest.restore.policy, prep.snapshot.meta.sizeBytes, deps.lazyThreshold)
      const runtime = kind === 'lazy' || kind === 'eager' ? deps.runtimes[kind] : undefined
      while (pool.sandboxes.length < want) {
        const id = `i${randomBytes(6).toString('hex')}`
        const sandbox = await newSandbox(id, fn, prep.image, prep.snapshot)
        const primed = runtime?.prime
          ? await runtime.prime(sandbox, prep.snapshot).catch(async (err: unknown) => {
              await deps.sandboxes.destroy(sandbox).catch(() => undefined)
              throw err
            })
          : { sandbox }
        pool.sandboxes.push(primed)
      }
    } catch (err) {
      log.error({ fn: fn.name, err: errorMessage(err) }, 'pool fill failed')
    }
  }

  const release = (inst: StartedInstance) => releaseInstance(deps, inst)

  async function startPrepared(
    job: RestoreJobData,
    fn: FunctionDef,
    prep: Prepared,
    pickedAt: number,
  ): Promise<RestoreJobResult> {
    let kind =
      job.runtime ??
      chooseRuntime(fn.manifest.restore.policy, prep.snapshot?.meta.sizeBytes, deps.lazyThreshold)
    let inst: StartedInstance
    try {
      inst = await startWith(kind, job, fn, prep)
    } catch (err) {
      if (kind === 'boot' || job.runtime !== undefined || !prep.snapshot) throw err
      // Served by booting; the snapshot is re-baked in the background.
      log.error(
        { fn: fn.name, id: job.instanceId, err: errorMessage(err) },
        'restore failed; falling back to boot',
      )
      await snapshotFailed(fn, prep.snapshot, err)
      kind = 'boot'
      inst = await startWith('boot', job, fn, { image: prep.image, snapshot: undefined })
    }
    live.set(inst.id, inst)
    const phases = { queueMs: Math.max(0, pickedAt - job.enqueuedAt), ...inst.phases }
    const address = { host: inst.ip, port: inst.port }
    const stillWanted = await deps.registry
      .markReady(fn.name, inst.id, address, inst.runtime, phases, deps.hostId)
      .catch(async (err: unknown) => {
        await manager.stop(inst.id, 'registry unreachable')
        throw err
      })
    if (!stillWanted) {
      // The gateway withdrew the reservation (the waiters left): nobody will use this instance.
      await manager.stop(inst.id, 'reservation withdrawn')
      throw new InitlessError('ERR_INSTANCE_DIED', `${fn.name}: reservation ${inst.id} was withdrawn`)
    }
    log.info(
      { fn: fn.name, id: inst.id, runtime: inst.runtime, pooled: inst.pooled, ...phases },
      'instance ready',
    )
    return {
      instanceId: inst.id,
      fn: fn.name,
      address,
      hostId: deps.hostId,
      runtime: inst.runtime,
      pooled: inst.pooled,
      phases,
      snapshotBytes: inst.snapshotBytes,
    }
  }

  const manager: InstanceManager = {
    async start(job) {
      const pickedAt = Date.now()
      const fn = findFn(job.fn)
      const { prep, recheck } = await preparationFor(fn)
      try {
        return await startPrepared(job, fn, prep, pickedAt)
      } finally {
        // Off the cold-start path: picks up edits of the function's files for the next start.
        if (recheck)
          void prepare(fn).catch((err: unknown) =>
            log.error({ fn: fn.name, err: errorMessage(err) }, 'prepare failed'),
          )
      }
    },

    async stop(id, reason) {
      const inst = live.get(id)
      if (!inst) return
      live.delete(id)
      log.info({ fn: inst.fn, id, reason }, 'instance stopped')
      await deps.registry
        .remove(inst.fn, id)
        .catch((err: unknown) => log.warn({ id, err: errorMessage(err) }, 'registry remove failed'))
      await release(inst)
    },

    live: () => [...live.values()],

    async dead() {
      const dead: StartedInstance[] = []
      for (const inst of live.values()) {
        if (
          inst.pid !== undefined
            ? !isProcessAlive(inst.pid)
            : inst.containerId
              ? !(await deps.docker.containerRunning(inst.containerId))
              : false
        ) {
          dead.push(inst)
        }
      }
      return dead
    },

    prepare,

    async fillPools() {
      await Promise.all(deps.functions().map((fn) => fillPool(fn)))
    },

    poolSize: (fn) => pools.get(fn)?.sandboxes.length ?? 0,

    async scrub() {
      const results: { fn: string; ok: boolean; ms: number; problem?: string }[] = []
      for (const fn of deps.functions()) {
        const snapshot = prepared.get(fn.name)?.prep.snapshot
        if (!snapshot) continue
        const t0 = performance.now()
        try {
          await deps.store.scrub(snapshot)
          results.push({ fn: fn.name, ok: true, ms: performance.now() - t0 })
        } catch (err) {
          results.push({ fn: fn.name, ok: false, ms: performance.now() - t0, problem: errorMessage(err) })
          await snapshotFailed(fn, snapshot, err)
        }
      }
      return results
    },

    async stopAll(reason) {
      await Promise.all([...live.keys()].map((id) => manager.stop(id, reason).catch(() => undefined)))
      for (const pool of pools.values()) {
        for (const p of pool.sandboxes.splice(0))
          await discardPooled(deps.sandboxes, p).catch(() => undefined)
      }
    },
  }
  return manager
}
