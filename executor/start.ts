/**
 * The executor process as a library, and its composition root: given its configuration and its
 * Redis connection, it wires its units (each given what it needs), takes the state dir, claims its
 * subnet with a first heartbeat, reconciles what a previous run left, serves restore jobs, keeps
 * beating, reaping and collecting, prepares every function (image, snapshot, pool) in the
 * background, and returns a close() that stops it all within the deadline. executor/main.ts builds
 * the Redis client; tests and benchmarks may start one in-process.
 */
import type { Logger } from 'pino'
import { HEARTBEAT_INTERVAL_MS, type ExecutorHeartbeat } from '../shared/contracts.ts'
import { errorMessage } from '../shared/errors.ts'
import type { FunctionDef } from '../shared/functions.ts'
import type { Redis } from '../shared/redis.ts'
import { createRedisInstanceDeaths } from '../shared/instance-deaths.ts'
import { createRedisRegistry, type InstanceRegistry, type RegistrySubscription } from '../shared/registry.ts'
import { createShutdown, within, type ShutdownResult, type ShutdownStep } from '../shared/shutdown.ts'
import { canonicalCidr } from '../shared/subnet.ts'
import { createHeartbeat } from './cluster/heartbeat.ts'
import { createPeerRouter, networkIdentity, type PeerRouter } from './cluster/peers.ts'
import { lockStateDir, type StateDirLock } from './cluster/state-lock.ts'
import type { DockerEngine } from './adapters/docker.ts'
import type { ExecutorConfig } from './config.ts'
import { createRegistryFollower, type RegistryFollower } from './follow-registry.ts'
import type { Lifecycle } from './functions/lifecycle.ts'
import { functionEventHandler } from './instances/function-events.ts'
import { createInstanceManager, type InstanceManager } from './instances/instances.ts'
import { createReaper, type Reaper } from './instances/reaper.ts'
import { createStandbyKeeper, type StandbyKeeper } from './instances/standby.ts'
import { reconcile, removeHostContainers, snapshotUsage } from './instances/reconcile.ts'
import { collectImageRootfs } from './adapters/rootfs.ts'
import { createRestoreWorker, type RestoreWorker } from './instances/worker.ts'
import { formatRestorePath, lazyRestoreHazard, readThpMode } from './sandbox/restore-path.ts'
import type { SandboxManager } from './sandbox/sandbox.ts'
import { createSecretFiles, type SecretFiles } from './sandbox/secret-files.ts'
import { loadSecretSealer } from '../shared/secret-crypto.ts'
import { createRedisSecretStore } from '../shared/secret-store.ts'
import type { SnapshotStore } from './snapshots/snapshot-store.ts'
import { applyNetworkPolicy, type NetworkPolicy } from './sandbox/network-policy.ts'
import {
  createBuilder,
  createHostAdapters,
  createHostBaker,
  createRuntimes,
  createSandboxes,
  createStore,
  type Runtimes,
} from './wiring.ts'

/** Retired snapshots and unneeded unpacked images are collected this often (ms). */
const SNAPSHOT_COLLECT_MS = 30_000
/** Redis steps of the shutdown get this long: with Redis out of reach they would wait for it. */
const REDIS_CLOSE_MS = 5_000

export interface ExecutorDeps {
  readonly logger: Logger
  /** The registry's connection; closed by close(). */
  readonly redis: Redis
  /**
   * A fixed set of functions to serve (tests). Default: the function registry's active versions,
   * followed live (deploys, rollbacks, deletes).
   */
  readonly functions?: readonly FunctionDef[]
}

export interface RunningExecutor {
  readonly registry: InstanceRegistry
  readonly instances: InstanceManager
  readonly reaper: Reaper
  /** Follows the function registry (absent when serving a fixed set of functions). */
  readonly lifecycle?: Lifecycle
  /** Resolves once every function was prepared (or failed to) and the pools were filled. */
  readonly prepared: Promise<void>
  /**
   * Stop taking jobs (running restores get the deadline, then go back to the queue), stop every
   * instance, release the state dir. Idempotent.
   */
  close(): Promise<ShutdownResult>
}

/**
 * Run `task` every `ms` (and at once with `immediately`), never two at once (a slow one skips the
 * ticks it overlaps).
 */
function every(ms: number, task: () => Promise<unknown>, immediately = false): NodeJS.Timeout {
  let running = false
  const tick = () => {
    if (running) return
    running = true
    void task().finally(() => (running = false))
  }
  if (immediately) tick()
  return setInterval(tick, ms)
}

/**
 * Remove retired snapshots no mount or lazy-pages daemon still uses, then the unpacked images no
 * current snapshot needs (each 100 MB-1 GB; without this every new image stayed on disk).
 */
async function collectUnused(
  store: Pick<SnapshotStore, 'collect' | 'imageIds'>,
  stateDir: string,
  logger: Logger,
): Promise<void> {
  try {
    const inUse = await snapshotUsage()
    const removed = await store.collect(inUse)
    if (removed.length) logger.info({ removed }, 'retired snapshots removed')
    const images = await collectImageRootfs(stateDir, await store.imageIds(), inUse)
    if (images.length) logger.info({ images }, 'unpacked images no snapshot needs removed')
  } catch (err) {
    logger.warn({ err: errorMessage(err) }, 'snapshot collection failed')
  }
}

/** Check every current snapshot's checksums; a corrupt one is marked broken and re-baked. */
async function scrubSnapshots(instances: Pick<InstanceManager, 'scrub'>, logger: Logger): Promise<void> {
  await instances
    .scrub()
    .then((results) => logger.info({ results }, 'snapshots scrubbed'))
    .catch((err: unknown) => logger.warn({ err: errorMessage(err) }, 'snapshot scrub failed'))
}

/**
 * Build, bake and pre-start pools in the background: restores that arrive first wait for the same
 * preparation (it is shared per function), they never start a second one.
 */
async function prepareAll(
  instances: Pick<InstanceManager, 'prepare' | 'fillPools'>,
  functions: readonly FunctionDef[],
  logger: Logger,
): Promise<void> {
  for (const fn of functions) {
    await instances
      .prepare(fn)
      .catch((err: unknown) => logger.error({ fn: fn.name, err: errorMessage(err) }, 'prepare failed'))
  }
  await instances.fillPools()
  logger.info({ functions: functions.map((f) => f.name) }, 'functions prepared')
}

function logRestorePath(
  sandboxes: Pick<SandboxManager, 'restorePath'>,
  hasHelper: boolean,
  logger: Logger,
): void {
  sandboxes.restorePath().then(
    async (path) => {
      logger.info(
        { restorePath: formatRestorePath(path), ...(path.filterError ? { err: path.filterError } : {}) },
        'restore path',
      )
      const hazard = lazyRestoreHazard(path, hasHelper, await readThpMode())
      if (hazard) logger.warn({ err: hazard }, 'lazy restores will fail on this host (see initless doctor)')
    },
    (err: unknown) => logger.warn({ err: errorMessage(err) }, 'restore path unknown'),
  )
}

/** The restore queue's worker: a failed job withdraws its reservation. */
function restoreWorker(
  config: ExecutorConfig,
  instances: Pick<InstanceManager, 'start'>,
  registry: Pick<InstanceRegistry, 'withdraw'>,
  logger: Logger,
): RestoreWorker {
  return createRestoreWorker({
    redisUrl: config.INITLESS_REDIS_URL,
    queueName: config.INITLESS_QUEUE_NAME,
    concurrency: config.INITLESS_RESTORE_CONCURRENCY,
    start: (job) => instances.start(job),
    onFailed: async (job) => {
      await registry.withdraw(job.fn, job.instanceId)
    },
    logger,
  })
}

/** This host's heartbeat record as of now. */
function heartbeatRecord(
  config: ExecutorConfig,
  functions: readonly FunctionDef[],
  subnet: string,
  network: string,
): ExecutorHeartbeat {
  return {
    hostId: config.hostId,
    at: Date.now(),
    pid: process.pid,
    functions: functions.map((f) => f.name),
    subnet,
    network,
    ...(config.INITLESS_ADVERTISE_ADDRESS ? { address: config.INITLESS_ADVERTISE_ADDRESS } : {}),
  }
}

/** The executor's shutdown, in order; every step runs whatever the others do. */
function shutdownSteps(p: {
  readonly hostId: string
  readonly logger: Logger
  readonly timers: readonly NodeJS.Timeout[]
  readonly worker: Pick<RestoreWorker, 'close'>
  readonly reaper: Pick<Reaper, 'settled'>
  readonly standby: Pick<StandbyKeeper, 'settled'>
  readonly instances: Pick<InstanceManager, 'stopAll'>
  readonly runtimes: Pick<Runtimes, 'docker'>
  readonly docker: Pick<DockerEngine, 'listContainers' | 'removeContainer'>
  readonly follower: Pick<RegistryFollower, 'close'> | undefined
  readonly peers: Pick<PeerRouter, 'closeForwarding'>
  readonly policy: Pick<NetworkPolicy, 'remove'>
  readonly subscription: RegistrySubscription
  readonly redis: Redis
  readonly stateLock: StateDirLock
  readonly secretFiles: Pick<SecretFiles, 'close'>
}): ShutdownStep[] {
  return [
    { name: 'timers', run: () => p.timers.forEach((t) => clearInterval(t)) },
    // No new versions, drains or clean-ups: the instances step below stops whatever runs.
    { name: 'function registry', timeoutMs: REDIS_CLOSE_MS, run: () => p.follower?.close() },
    // Running restores may finish within the deadline; past it the worker closes without
    // waiting: their locks lapse and BullMQ hands the jobs to another executor (stalled jobs).
    {
      name: 'restore worker',
      run: () => p.worker.close(false),
      onTimeout: () => {
        p.logger.warn('restores still running at the deadline: handing them back to the queue')
        return p.worker.close(true)
      },
    },
    { name: 'min instances', run: () => p.reaper.settled() },
    { name: 'standby instances', run: () => p.standby.settled() },
    // From here every step runs to its end whatever the deadline (nothing may be left running),
    // except those that wait for Redis, which get a few seconds.
    { name: 'instances', timeoutMs: Infinity, run: () => p.instances.stopAll('executor shutdown') },
    // Instances keep their own bind mounts of their directories; the host's view goes.
    { name: 'secret files', timeoutMs: Infinity, run: () => p.secretFiles.close() },
    // Templates hold checkpoints in Docker's storage; reconcile would remove them at the next start.
    { name: 'docker templates', timeoutMs: Infinity, run: () => p.runtimes.docker.discard() },
    // A preparation still running (a bake) may be exporting an image: its container would
    // otherwise wait for the next start's reconcile.
    {
      name: 'export containers',
      timeoutMs: Infinity,
      run: () => removeHostContainers(p.docker, p.hostId, ['exports']),
    },
    { name: 'forwarding rules', timeoutMs: Infinity, run: () => p.peers.closeForwarding() },
    { name: 'network policy', timeoutMs: Infinity, run: () => p.policy.remove() },
    { name: 'subscription', timeoutMs: REDIS_CLOSE_MS, run: () => p.subscription.close() },
    {
      name: 'redis',
      timeoutMs: Infinity,
      run: () => within(p.redis.quit(), REDIS_CLOSE_MS).finally(() => p.redis.disconnect()),
    },
    { name: 'state dir lock', timeoutMs: Infinity, run: () => p.stateLock.release() },
  ]
}

/**
 * Start the executor. Rejects with ERR_STATE_DIR_IN_USE when another executor serves the state dir
 * and with ERR_SUBNET_IN_USE when another host holds an overlapping subnet.
 */
export async function startExecutor(config: ExecutorConfig, deps: ExecutorDeps): Promise<RunningExecutor> {
  const { logger, redis } = deps
  const hostId = config.hostId
  // Before anything touches the state dir: reconciling it under a running executor would tear that
  // executor's instances down (state-lock.ts).
  const stateLock = await lockStateDir(config.INITLESS_STATE_DIR, { hostId })
  redis.on('error', (err: Error) => logger.debug({ err: err.message }, 'redis connection error'))
  const registry = createRedisRegistry({ redis, logger, prefix: config.INITLESS_KEY_PREFIX })

  // The host's adapters, and the units over them.
  const adapters = createHostAdapters(config, logger)
  const secretFiles = createSecretFiles({ stateDir: config.INITLESS_STATE_DIR, mounter: adapters.mounter })
  const sandboxes = createSandboxes(config, adapters, secretFiles)
  const store = createStore(config)
  const builder = createBuilder(config, adapters, logger)
  const baker = createHostBaker(config, adapters, sandboxes, store, logger)
  const runtimes = createRuntimes(adapters, sandboxes, store, logger, secretFiles)
  // A start that fails past this point leaves nothing behind.
  let follower: RegistryFollower | undefined
  const release = async (err: unknown): Promise<never> => {
    await follower?.close()
    await stateLock.release()
    throw err
  }
  const sealer = await loadSecretSealer(config.INITLESS_SECRETS_KEY_FILE).catch(release)
  const secrets = {
    store: createRedisSecretStore({ redis, sealer, prefix: config.INITLESS_KEY_PREFIX }),
    files: secretFiles,
  }
  const units = { redis, store, docker: adapters.docker, builder, baker, logger }
  if (!deps.functions) follower = await createRegistryFollower(config, units).catch(release)
  const functions = (): readonly FunctionDef[] => deps.functions ?? follower?.source.functions() ?? []
  const bakes = follower?.baker ?? baker

  // This host's heartbeat; the first one claims the subnet before any address is handed out from it.
  const subnet = canonicalCidr(config.INITLESS_SUBNET)
  const network = await networkIdentity()
  const peers = createPeerRouter({ run: adapters.run, self: { hostId, subnet, network }, logger })
  const heartbeat = createHeartbeat({
    registry,
    peers,
    now: Date.now,
    logger,
    record: () => heartbeatRecord(config, functions(), subnet, network),
  })
  await heartbeat.claim().catch(release)

  const instances = createInstanceManager({
    hostId,
    stateDir: config.INITLESS_STATE_DIR,
    lazyThreshold: config.INITLESS_LAZY_THRESHOLD,
    functions,
    registry,
    builder,
    baker: bakes,
    store,
    docker: adapters.docker,
    sandboxes,
    runtimes,
    logger,
    secrets,
    recheckDelayMs: config.INITLESS_RECHECK_DELAY,
  })
  // A crashed run's secrets tmpfs (its instances are reconciled away below).
  await secretFiles.close()
  await reconcile({ hostId, stateDir: config.INITLESS_STATE_DIR, ...adapters, registry, logger })
  // Before the first instance exists: no instance ever runs outside the policy.
  const policy = await applyNetworkPolicy({
    run: adapters.run,
    bridge: config.INITLESS_BRIDGE,
    subnet,
    logger,
  }).catch(release)
  // The active versions are this host's definitions before the first restore job is taken.
  const lifecycle = await follower?.start(instances, registry)
  const worker = restoreWorker(config, instances, registry, logger)

  if (config.INITLESS_ADVERTISE_ADDRESS) await peers.openForwarding()
  void heartbeat.beat()
  const reaper = createReaper({
    instances,
    registry,
    deaths: createRedisInstanceDeaths({ redis, prefix: config.INITLESS_KEY_PREFIX }),
    functions,
    now: Date.now,
    logger,
    hostId,
    beatingSince: () => heartbeat.beatingSince(),
  })
  const standby = createStandbyKeeper({ instances, registry, functions, hostId, now: Date.now, logger })
  const tick = async () => {
    await reaper
      .tick()
      .catch((err: unknown) => logger.error({ err: errorMessage(err) }, 'reaper tick failed'))
    await standby
      .tick()
      .catch((err: unknown) => logger.error({ err: errorMessage(err) }, 'standby tick failed'))
  }
  const timers = [
    // Beats may overlap (a beat waiting for Redis must not hold the next one back).
    setInterval(() => void heartbeat.beat(), HEARTBEAT_INTERVAL_MS),
    every(config.INITLESS_REAP_INTERVAL, tick),
    // At once too: what a previous process left (it may have stopped before its first tick).
    every(SNAPSHOT_COLLECT_MS, () => collectUnused(store, config.INITLESS_STATE_DIR, logger), true),
    ...(config.INITLESS_SNAPSHOT_SCRUB_INTERVAL > 0
      ? [every(config.INITLESS_SNAPSHOT_SCRUB_INTERVAL, () => scrubSnapshots(instances, logger))]
      : []),
  ]
  const onFunctionEvent = functionEventHandler({ functions, instances, builder, baker: bakes, logger })
  const subscription = await registry.subscribe({
    onEvent: (event) => {
      standby.onEvent(event)
      onFunctionEvent(event)
    },
  })

  const prepared = prepareAll(instances, functions(), logger)
  logger.info(
    { hostId, functions: functions().map((f) => f.name), secretsEncrypted: sealer.encrypts },
    'executor started',
  )
  logRestorePath(sandboxes, adapters.helperPath !== undefined, logger)

  const steps = shutdownSteps({
    hostId,
    logger,
    timers,
    follower,
    worker,
    reaper,
    standby,
    instances,
    runtimes,
    docker: adapters.docker,
    peers,
    policy,
    subscription,
    redis,
    stateLock,
    secretFiles,
  })
  const shutdown = createShutdown({ logger, deadlineMs: config.INITLESS_SHUTDOWN_TIMEOUT, steps })
  let closing: Promise<ShutdownResult> | undefined
  return {
    registry,
    instances,
    reaper,
    prepared,
    ...(lifecycle ? { lifecycle } : {}),
    close() {
      closing ??= shutdown().then((result) => {
        logger.info('stopped')
        return result
      })
      return closing
    },
  }
}
