/**
 * The instance manager: everything one executor host runs. It starts instances (choosing the
 * runtime from the function's policy and snapshot, falling back to boot when a snapshot is missing
 * or fails), keeps the registry in step, stops instances, and keeps the pre-started pool filled.
 */
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
import { chooseRuntime, type Runtime, type StartedInstance } from '../runtimes/runtimes.ts'
import { sandboxLimits, type Sandbox, type SandboxManager } from '../sandbox/sandbox.ts'
import type { Snapshot, SnapshotStore } from '../snapshots/snapshot-store.ts'
import type { CgroupUsage } from '../adapters/freezer.ts'
import { createSandboxPools, type SandboxPools } from './pools.ts'
import { createPreparations, type Prepared } from './preparations.ts'
import { createSnapshotHealth, type ScrubResult } from './snapshot-health.ts'
import { parseImageUser } from '../sandbox/oci-spec.ts'
import type { SecretFiles } from '../sandbox/secret-files.ts'
import type { InstanceSecrets } from '../runtimes/runtimes.ts'
import { declaredSecrets, formatSecretRef, type SecretStore } from '../../shared/secrets.ts'
import { endingOf, type Ending } from './death-reason.ts'

export interface InstanceManagerDeps {
  readonly hostId: string
  readonly stateDir: string
  readonly lazyThreshold: number
  readonly functions: () => readonly FunctionDef[]
  readonly registry: Pick<InstanceRegistry, 'markReady' | 'markFrozen' | 'remove'>
  readonly builder: Pick<ImageBuilder, 'build'>
  readonly baker: Pick<Baker, 'bake'>
  readonly store: Pick<SnapshotStore, 'usable' | 'markBroken' | 'verify' | 'scrub'>
  readonly docker: Pick<DockerEngine, 'exportRootfs' | 'removeContainer' | 'containerRunning'>
  readonly sandboxes: Pick<SandboxManager, 'prepare' | 'destroy' | 'limitEvents' | 'setFrozen' | 'usage'>
  /** `docker` (Docker's checkpoint API) serves only jobs that ask for it; without it they fail. */
  readonly runtimes: InstanceRuntimes
  readonly logger: Logger
  /**
   * Secret values (read just before each start of a function that declares secrets) and the
   * directories they are written to. Absent: a function that declares secrets is refused.
   */
  readonly secrets?: InstanceSecretDeps
  /** After a start, how long until its function is checked for edits (INITLESS_RECHECK_DELAY). */
  readonly recheckDelayMs: number
}

export interface InstanceSecretDeps {
  readonly store: Pick<SecretStore, 'read'>
  readonly files: Pick<SecretFiles, 'remove'>
}

export type InstanceRuntimes = Readonly<Record<'lazy' | 'eager' | 'boot', Runtime>> & {
  readonly docker?: Pick<DockerCheckpointRuntime, 'start' | 'stop'>
}

export type { Prepared } from './preparations.ts'

export interface InstanceManager {
  /** Serve one restore job: start the reserved instance and mark it ready in the registry. */
  start(job: RestoreJobData): Promise<RestoreJobResult>
  /** Stop an instance and release all it holds; removes it from the registry. */
  stop(id: string, reason: string): Promise<void>
  live(): readonly StartedInstance[]
  /** Instances whose process is gone (exited, OOM-killed). */
  dead(): Promise<StartedInstance[]>
  /**
   * Instances that died or hit a limit they must be recycled for, with the reason
   * (death-reason.ts). Read before stop(): the counters go with the sandbox.
   */
  ended(): Promise<{ instance: StartedInstance; ending: Ending }[]>
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
  scrub(): Promise<ScrubResult[]>
  poolSize(fn: string): number
  /** Ids of this host's standby instances still frozen. */
  frozen(): readonly string[]
  /** Thaw a frozen standby instance (a gateway claimed it). False when it is not one of them. */
  thaw(id: string): Promise<boolean>
  /** The memory an instance's cgroup holds and the CPU time it used; undefined without a sandbox. */
  usage(id: string): Promise<CgroupUsage | undefined>
}

/**
 * The sandbox an instance of `fn` is restored into: an overlay over the snapshot's upper dir and
 * the image's rootfs (unpacked once per image), with the manifest's process and limits.
 */
export async function prepareRestoreSandbox(
  deps: {
    stateDir: string
    docker: Pick<DockerEngine, 'exportRootfs'>
    sandboxes: Pick<SandboxManager, 'prepare'>
  },
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
  deps: {
    docker: Pick<DockerEngine, 'removeContainer'>
    sandboxes: Pick<SandboxManager, 'destroy'>
    runtimes: Pick<InstanceRuntimes, 'docker'>
    secrets?: Pick<InstanceSecretDeps, 'files'>
  },
  inst: StartedInstance,
): Promise<void> {
  // Stopped, never removed: its container holds the checkpoint the next restore starts from.
  if (inst.runtime === 'docker') return deps.runtimes.docker?.stop(inst)
  killLazyPages(inst.lazyDaemon)
  if (inst.sandbox) await deps.sandboxes.destroy(inst.sandbox)
  if (inst.containerId) await deps.docker.removeContainer(inst.containerId)
  // A boot's secrets directory (a sandbox's goes with the sandbox).
  if (inst.runtime === 'boot') await deps.secrets?.files.remove(inst.id)
}

/**
 * The secret values an instance of `fn` starts with, read now (so a value set a moment ago is the
 * one it gets). Undefined for a function without secrets. A declared secret without a value fails
 * the start with ERR_SECRET_MISSING (not retried, no fallback: the operator must set it).
 */
export async function readInstanceSecrets(
  secrets: Pick<InstanceSecretDeps, 'store'> | undefined,
  fn: FunctionDef,
  image: ImageConfig,
): Promise<InstanceSecrets | undefined> {
  const refs = declaredSecrets(fn.name, fn.manifest.secrets)
  if (!refs.length) return undefined
  if (!secrets) throw new InitlessError('ERR_SECRET_MISSING', `${fn.name}: this executor has no secret store`)
  const t0 = performance.now()
  const { values, missing } = await secrets.store.read(refs)
  if (missing.length)
    throw new InitlessError(
      'ERR_SECRET_MISSING',
      `${fn.name}: no value for secret ${missing.map(formatSecretRef).join(', ')} (set it with initless secrets set)`,
      { details: { fn: fn.name, missing: missing.map(formatSecretRef) } },
    )
  return { values, owner: parseImageUser(image.user), readMs: performance.now() - t0 }
}

/** Start an instance of `fn` with runtime `kind`: a pooled sandbox when one fits, else a new one. */
async function startWith(
  deps: Pick<InstanceManagerDeps, 'hostId' | 'runtimes' | 'stateDir' | 'docker' | 'sandboxes'>,
  pools: SandboxPools,
  kind: RuntimeKind,
  job: RestoreJobData,
  fn: FunctionDef,
  prep: Prepared,
  secrets: InstanceSecrets | undefined,
): Promise<StartedInstance> {
  const common = {
    instanceId: job.instanceId,
    fn,
    image: prep.image,
    hostLabel: deps.hostId,
    ...(secrets ? { secrets } : {}),
  }
  if (kind === 'docker') {
    const docker = deps.runtimes.docker
    if (!docker)
      throw new InitlessError('ERR_RESTORE_FAILED', 'the docker runtime is not served by this executor')
    if (secrets)
      throw new InitlessError('ERR_RESTORE_FAILED', `${fn.name}: the docker runtime mounts no secrets`)
    return docker.start({
      ...common,
      prepare: () => Promise.reject(new InitlessError('ERR_INTERNAL', 'the docker runtime uses no sandbox')),
    })
  }
  const snapshot = prep.snapshot
  const pooled = kind !== 'boot' && snapshot && !job.noPool ? pools.take(fn, snapshot) : undefined
  const started = deps.runtimes[kind].start({
    ...common,
    ...(snapshot ? { snapshot } : {}),
    ...(pooled ? { pooled } : {}),
    prepare: () => {
      if (!snapshot) throw new InitlessError('ERR_SNAPSHOT_NOT_FOUND', `${fn.name}: no snapshot`)
      return prepareRestoreSandbox(deps, { id: job.instanceId, fn, image: prep.image, snapshot })
    },
  })
  // Refill once this restore is done: preparing a sandbox alongside it would compete for the CPU.
  if (pooled) void started.finally(() => void pools.fill(fn)).catch(() => undefined)
  return started
}

/** The job's result for a started instance. */
function jobResult(
  inst: StartedInstance,
  hostId: string,
  phases: RestoreJobResult['phases'],
): RestoreJobResult {
  return {
    instanceId: inst.id,
    fn: inst.fn,
    address: { host: inst.ip, port: inst.port },
    hostId,
    runtime: inst.runtime,
    pooled: inst.pooled,
    phases,
    snapshotBytes: inst.snapshotBytes,
  }
}

function findFn(functions: () => readonly FunctionDef[], name: string): FunctionDef {
  const fn = functions().find((f) => f.name === name)
  if (!fn) throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `unknown function '${name}'`)
  return fn
}

/** Is the instance's process (or container) gone? */
async function isDead(
  docker: Pick<DockerEngine, 'containerRunning'>,
  inst: StartedInstance,
): Promise<boolean> {
  if (inst.pid !== undefined) return !isProcessAlive(inst.pid)
  return inst.containerId ? !(await docker.containerRunning(inst.containerId)) : false
}

/** Create the instance manager of one executor host. */
export function createInstanceManager(deps: InstanceManagerDeps): InstanceManager {
  const log = deps.logger.child({ module: 'instances' })
  const live = new Map<string, StartedInstance>()
  const preparations = createPreparations({
    ...deps,
    found: (fn, snapshot) => health.checkFound(fn, snapshot),
  })
  const prepare = (fn: FunctionDef) => preparations.prepare(fn)
  const health = createSnapshotHealth({ ...deps, preparations, logger: log })
  const pools = createSandboxPools({
    sandboxes: deps.sandboxes,
    runtimes: deps.runtimes,
    lazyThreshold: deps.lazyThreshold,
    prepare,
    newSandbox: (id, fn, image, snapshot) => prepareRestoreSandbox(deps, { id, fn, image, snapshot }),
    logger: log,
  })

  /** Start with the chosen runtime; a snapshot that fails to restore is marked broken and booted past. */
  async function startOrBoot(job: RestoreJobData, fn: FunctionDef, prep: Prepared): Promise<StartedInstance> {
    const kind =
      job.runtime ??
      chooseRuntime(fn.manifest.restore.policy, prep.snapshot?.meta.sizeBytes, deps.lazyThreshold)
    // Before any restore: a missing value is the operator's to fix, not the snapshot's fault.
    const secrets = await readInstanceSecrets(deps.secrets, fn, prep.image)
    try {
      return await startWith(deps, pools, kind, job, fn, prep, secrets)
    } catch (err) {
      if (kind === 'boot' || job.runtime !== undefined || !prep.snapshot) throw err
      // Served by booting; the snapshot is re-baked in the background.
      log.error(
        { fn: fn.name, id: job.instanceId, err: errorMessage(err) },
        'restore failed; falling back to boot',
      )
      await health.failed(fn, prep.snapshot, err)
      return startWith(deps, pools, 'boot', job, fn, { image: prep.image, snapshot: undefined }, secrets)
    }
  }

  async function startPrepared(
    job: RestoreJobData,
    fn: FunctionDef,
    prep: Prepared,
    pickedAt: number,
  ): Promise<RestoreJobResult> {
    const inst = await startOrBoot(job, fn, prep)
    live.set(inst.id, inst)
    const phases = { queueMs: Math.max(0, pickedAt - job.enqueuedAt), ...inst.phases }
    if (job.reason === 'standby') return freezeStandby(fn, inst, phases)
    const stillWanted = await deps.registry
      .markReady(
        fn.name,
        inst.id,
        { host: inst.ip, port: inst.port },
        inst.runtime,
        phases,
        deps.hostId,
        fn.version,
      )
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
      {
        fn: fn.name,
        version: fn.version,
        id: inst.id,
        runtime: inst.runtime,
        pooled: inst.pooled,
        ...phases,
      },
      'instance ready',
    )
    return jobResult(inst, deps.hostId, phases)
  }

  /** Ids of standby instances frozen now (cleared when thawed or stopped). */
  const frozen = new Set<string>()

  /**
   * A standby instance is ready: freeze its cgroup, then record it frozen with the memory it holds.
   * Frozen before the record has its address: no gateway can claim it while it still runs.
   */
  async function freezeStandby(
    fn: FunctionDef,
    inst: StartedInstance,
    phases: RestoreJobResult['phases'],
  ): Promise<RestoreJobResult> {
    const sandbox = inst.sandbox
    try {
      if (!sandbox)
        throw new InitlessError('ERR_RESTORE_FAILED', `${inst.runtime} instances cannot be frozen`)
      await deps.sandboxes.setFrozen(sandbox, true)
      frozen.add(inst.id)
      const { memoryBytes } = await deps.sandboxes.usage(sandbox)
      const info = { address: { host: inst.ip, port: inst.port }, runtime: inst.runtime, phases }
      const kept = await deps.registry.markFrozen(fn.name, inst.id, {
        ...info,
        hostId: deps.hostId,
        memoryBytes,
        ...(fn.version ? { version: fn.version } : {}),
      })
      if (!kept) throw new InitlessError('ERR_INSTANCE_DIED', `${fn.name}: standby ${inst.id} was withdrawn`)
      log.info({ fn: fn.name, id: inst.id, runtime: inst.runtime, memoryBytes, ...phases }, 'standby frozen')
      return jobResult(inst, deps.hostId, phases)
    } catch (err) {
      await manager.stop(inst.id, 'standby not kept')
      throw err
    }
  }

  /** Rechecks due, by function name: at most one pending each, for the last definition started. */
  const rechecks = new Map<string, { timer: NodeJS.Timeout; fn: FunctionDef }>()
  let isStopped = false
  /**
   * Prepare the function again (hash its folder, ask Docker, find its snapshot) to pick up edits of
   * its files for a later start. Deferred: run at once it took CPU from the instance's first
   * answer, and a second later from the next start (bench/README.md, "The recheck after a start");
   * coalesced, so a burst of starts costs one recheck, not one each. Only while the definition
   * started last is still the function's: a deleted one is not the recheck's to prepare.
   */
  function scheduleRecheck(fn: FunctionDef): void {
    if (isStopped) return
    const pending = rechecks.get(fn.name)
    if (pending) return void (pending.fn = fn)
    const entry = {
      fn,
      timer: setTimeout(() => {
        rechecks.delete(fn.name)
        if (isStopped || !deps.functions().includes(entry.fn)) return
        prepare(entry.fn).catch((err: unknown) =>
          log.error({ fn: fn.name, err: errorMessage(err) }, 'prepare failed'),
        )
      }, deps.recheckDelayMs),
    }
    entry.timer.unref()
    rechecks.set(fn.name, entry)
  }

  const manager: InstanceManager = {
    async start(job) {
      const pickedAt = Date.now()
      const fn = findFn(deps.functions, job.fn)
      const { prep, recheck } = await preparations.current(fn)
      try {
        return await startPrepared(job, fn, prep, pickedAt)
      } finally {
        if (recheck) scheduleRecheck(fn)
      }
    },

    async stop(id, reason) {
      const inst = live.get(id)
      if (!inst) return
      live.delete(id)
      frozen.delete(id)
      log.info({ fn: inst.fn, id, reason }, 'instance stopped')
      await deps.registry
        .remove(inst.fn, id)
        .catch((err: unknown) => log.warn({ id, err: errorMessage(err) }, 'registry remove failed'))
      await releaseInstance(deps, inst)
    },

    live: () => [...live.values()],

    async dead() {
      const dead: StartedInstance[] = []
      for (const inst of live.values()) if (await isDead(deps.docker, inst)) dead.push(inst)
      return dead
    },

    async ended() {
      const ended = []
      for (const inst of live.values()) {
        const alive = !(await isDead(deps.docker, inst))
        const events = inst.sandbox
          ? await deps.sandboxes.limitEvents(inst.sandbox).catch(() => undefined)
          : undefined
        const ending = endingOf(alive, events)
        if (ending) ended.push({ instance: inst, ending })
      }
      return ended
    },

    prepare,

    async fillPools() {
      await Promise.all(deps.functions().map((fn) => pools.fill(fn)))
    },

    poolSize: (fn) => pools.size(fn),

    scrub: () => health.scrub(),

    frozen: () => [...frozen],

    async thaw(id) {
      const sandbox = live.get(id)?.sandbox
      if (!frozen.delete(id) || !sandbox) return false
      await deps.sandboxes.setFrozen(sandbox, false)
      return true
    },

    async usage(id) {
      const sandbox = live.get(id)?.sandbox
      return sandbox && deps.sandboxes.usage(sandbox)
    },

    async stopAll(reason) {
      // A start still running schedules no recheck from now on (its instance is about to go too).
      isStopped = true
      for (const { timer } of rechecks.values()) clearTimeout(timer)
      rechecks.clear()
      await Promise.all([...live.keys()].map((id) => manager.stop(id, reason).catch(() => undefined)))
      await pools.drain()
    },
  }
  return manager
}
