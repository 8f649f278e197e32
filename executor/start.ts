/**
 * The executor process as a library: given its configuration, its host adapters and its Redis
 * connection, it takes the state dir, claims its subnet with a first heartbeat, reconciles what a
 * previous run left, serves restore jobs, keeps beating, reaping and collecting, prepares every
 * function (image, snapshot, pool) in the background, and returns a close() that stops it all
 * within the deadline. executor/main.ts builds the real clients; tests may start one in-process.
 */
import type { Logger } from 'pino'
import { HEARTBEAT_INTERVAL_MS, type ExecutorHeartbeat } from '../shared/contracts.ts'
import { errorMessage, InitlessError } from '../shared/errors.ts'
import { loadFunctionDefs, type FunctionDef } from '../shared/functions.ts'
import type { Redis } from '../shared/redis.ts'
import { createRedisRegistry, type InstanceRegistry } from '../shared/registry.ts'
import { createShutdown, within, type ShutdownResult } from '../shared/shutdown.ts'
import { canonicalCidr } from '../shared/subnet.ts'
import type { ExecutorConfig } from './config.ts'
import { createHostInstanceManager, type Host } from './host.ts'
import type { InstanceManager } from './instances/instances.ts'
import { createPeerRouter, networkIdentity } from './cluster/peers.ts'
import { formatRestorePath } from './sandbox/restore-path.ts'
import {
  createReaper,
  reconcile,
  removeHostContainers,
  snapshotUsage,
  type Reaper,
} from './instances/reaper.ts'
import { lockStateDir } from './cluster/state-lock.ts'
import { createRestoreWorker } from './instances/worker.ts'

/** Retired snapshots are collected this often (ms). */
const SNAPSHOT_COLLECT_MS = 30_000
/** Redis steps of the shutdown get this long: with Redis out of reach they would wait for it. */
const REDIS_CLOSE_MS = 5_000

export interface ExecutorDeps {
  readonly logger: Logger
  /** The host adapters (executor/host.ts createHost). */
  readonly host: Host
  /** The registry's connection; closed by close(). */
  readonly redis: Redis
  /** The functions to serve. Default: those in INITLESS_FUNCTIONS_DIR (problems are logged). */
  readonly functions?: readonly FunctionDef[]
}

export interface RunningExecutor {
  readonly registry: InstanceRegistry
  readonly instances: InstanceManager
  readonly reaper: Reaper
  /** Resolves once every function was prepared (or failed to) and the pools were filled. */
  readonly prepared: Promise<void>
  /**
   * Stop taking jobs (running restores get the deadline, then go back to the queue), stop every
   * instance, release the state dir. Idempotent.
   */
  close(): Promise<ShutdownResult>
}

/**
 * Start the executor. Rejects with ERR_STATE_DIR_IN_USE when another executor serves the state dir
 * and with ERR_SUBNET_IN_USE when another host holds an overlapping subnet.
 */
export async function startExecutor(config: ExecutorConfig, deps: ExecutorDeps): Promise<RunningExecutor> {
  const { logger, host, redis } = deps
  // Before anything touches the state dir: reconciling it under a running executor would tear that
  // executor's instances down (state-lock.ts).
  const stateLock = await lockStateDir(config.INITLESS_STATE_DIR, { hostId: config.hostId })
  redis.on('error', (err: Error) => logger.debug({ err: err.message }, 'redis connection error'))
  const registry = createRedisRegistry({ redis, logger, prefix: config.INITLESS_KEY_PREFIX })
  const functions = deps.functions ?? (await loadFunctions(config.INITLESS_FUNCTIONS_DIR, logger))

  // This host's heartbeat; the first one claims the subnet before any address is handed out from it.
  const subnet = canonicalCidr(config.INITLESS_SUBNET)
  const network = await networkIdentity()
  const heartbeat = (): ExecutorHeartbeat => ({
    hostId: config.hostId,
    at: Date.now(),
    pid: process.pid,
    functions: functions.map((f) => f.name),
    subnet,
    network,
    ...(config.INITLESS_ADVERTISE_ADDRESS ? { address: config.INITLESS_ADVERTISE_ADDRESS } : {}),
  })
  const subnetInUse = (holder: ExecutorHeartbeat) =>
    new InitlessError(
      'ERR_SUBNET_IN_USE',
      `INITLESS_SUBNET ${subnet} overlaps ${holder.subnet} of host ${holder.hostId} (pid ${holder.pid}, ` +
        `last heartbeat ${Date.now() - holder.at} ms ago): every host needs a subnet of its own`,
    )
  const holder = await registry.beat(heartbeat()).catch(async (err: unknown) => {
    await stateLock.release()
    throw err
  })
  if (holder) {
    await stateLock.release()
    throw subnetInUse(holder)
  }

  const instances = createHostInstanceManager(host, {
    hostId: config.hostId,
    functions: () => functions,
    registry,
    logger,
  })
  await reconcile({
    hostId: config.hostId,
    stateDir: config.INITLESS_STATE_DIR,
    runc: host.runc,
    mounter: host.mounter,
    network: host.network,
    ips: host.ips,
    docker: host.docker,
    registry,
    logger,
  })
  const worker = createRestoreWorker({
    redisUrl: config.INITLESS_REDIS_URL,
    queueName: config.INITLESS_QUEUE_NAME,
    concurrency: config.INITLESS_RESTORE_CONCURRENCY,
    start: (job) => instances.start(job),
    onFailed: async (job) => {
      await registry.withdraw(job.fn, job.instanceId)
    },
    logger,
  })

  const timers: NodeJS.Timeout[] = []
  const peers = createPeerRouter({ run: host.run, self: { hostId: config.hostId, subnet, network }, logger })
  if (config.INITLESS_ADVERTISE_ADDRESS) await peers.openForwarding()
  let syncing = false
  /** Since when every heartbeat has been recorded (the reaper judges other hosts only after a while). */
  let beatingSince: number | undefined
  const beat = async () => {
    try {
      const other = await registry.beat(heartbeat())
      beatingSince = other ? undefined : (beatingSince ?? Date.now())
      // Only after a silence longer than EXECUTOR_FRESH_MS (Redis out of reach) can another host
      // have claimed the subnet since this one started: both now hand out the same addresses.
      if (other)
        logger.error({ code: 'ERR_SUBNET_IN_USE', err: subnetInUse(other).message }, 'heartbeat refused')
    } catch (err) {
      beatingSince = undefined
      logger.debug({ err: errorMessage(err) }, 'heartbeat failed')
    }
    if (syncing) return
    syncing = true
    await registry
      .executors()
      .then((all) => peers.sync(all, Date.now()))
      .catch((err: unknown) => logger.warn({ err: errorMessage(err) }, 'routes to peers not synced'))
      .finally(() => (syncing = false))
  }
  void beat()
  timers.push(setInterval(() => void beat(), HEARTBEAT_INTERVAL_MS))

  const reaper = createReaper({
    instances,
    registry,
    functions: () => functions,
    now: Date.now,
    logger,
    hostId: config.hostId,
    beatingSince: () => beatingSince,
  })
  let reaping = false
  timers.push(
    setInterval(() => {
      if (reaping) return
      reaping = true
      reaper
        .tick()
        .catch((err: unknown) => logger.error({ err: errorMessage(err) }, 'reaper tick failed'))
        .finally(() => (reaping = false))
    }, config.INITLESS_REAP_INTERVAL),
  )
  if (config.INITLESS_SNAPSHOT_SCRUB_INTERVAL > 0)
    timers.push(
      setInterval(() => {
        void instances
          .scrub()
          .then((results) => logger.info({ results }, 'snapshots scrubbed'))
          .catch((err: unknown) => logger.warn({ err: errorMessage(err) }, 'snapshot scrub failed'))
      }, config.INITLESS_SNAPSHOT_SCRUB_INTERVAL),
    )
  timers.push(
    setInterval(() => {
      void snapshotUsage()
        .then((inUse) => host.store.collect(inUse))
        .then((removed) => removed.length && logger.info({ removed }, 'retired snapshots removed'))
        .catch((err: unknown) => logger.warn({ err: errorMessage(err) }, 'snapshot collection failed'))
    }, SNAPSHOT_COLLECT_MS),
  )

  const subscription = await registry.subscribe({
    onEvent(event) {
      if (event.type !== 'function') return
      const fn = functions.find((f) => f.name === event.fn)
      if (!fn) return
      if (event.action === 'scale-to-zero') {
        const ids = instances
          .live()
          .filter((i) => i.fn === fn.name)
          .map((i) => i.id)
        logger.info({ fn: fn.name, instances: ids.length }, 'scale to zero requested')
        void Promise.all(ids.map((id) => instances.stop(id, 'scaled to zero')))
      } else {
        logger.info({ fn: fn.name }, 're-bake requested')
        void host.builder
          .build(fn)
          .then((b) => host.baker.bake(fn, b.image, { force: true }))
          .then(() => instances.fillPools())
          .catch((err: unknown) => logger.error({ fn: fn.name, err: errorMessage(err) }, 're-bake failed'))
      }
    },
  })

  // Build, bake and pre-start pools in the background: restores that arrive first wait for the
  // same preparation (it is shared per function), they never start a second one.
  const prepared = (async () => {
    for (const fn of functions) {
      await instances
        .prepare(fn)
        .catch((err: unknown) => logger.error({ fn: fn.name, err: errorMessage(err) }, 'prepare failed'))
    }
    await instances.fillPools()
    logger.info({ functions: functions.map((f) => f.name) }, 'functions prepared')
  })()
  logger.info({ hostId: config.hostId, functions: functions.map((f) => f.name) }, 'executor started')
  host.sandboxes.restorePath().then(
    (path) =>
      logger.info(
        { restorePath: formatRestorePath(path), ...(path.filterError ? { err: path.filterError } : {}) },
        'restore path',
      ),
    (err: unknown) => logger.warn({ err: errorMessage(err) }, 'restore path unknown'),
  )

  const shutdown = createShutdown({
    logger,
    deadlineMs: config.INITLESS_SHUTDOWN_TIMEOUT,
    steps: [
      { name: 'timers', run: () => timers.forEach((t) => clearInterval(t)) },
      // Running restores may finish within the deadline; past it the worker closes without
      // waiting: their locks lapse and BullMQ hands the jobs to another executor (stalled jobs).
      {
        name: 'restore worker',
        run: () => worker.close(false),
        onTimeout: () => {
          logger.warn('restores still running at the deadline: handing them back to the queue')
          return worker.close(true)
        },
      },
      { name: 'min instances', run: () => reaper.settled() },
      // From here every step runs to its end whatever the deadline (nothing may be left running),
      // except those that wait for Redis, which get a few seconds.
      { name: 'instances', timeoutMs: Infinity, run: () => instances.stopAll('executor shutdown') },
      // Templates hold checkpoints in Docker's storage; reconcile would remove them at the next start.
      { name: 'docker templates', timeoutMs: Infinity, run: () => host.runtimes.docker.discard() },
      // A preparation still running (a bake) may be exporting an image: its container would
      // otherwise wait for the next start's reconcile.
      {
        name: 'export containers',
        timeoutMs: Infinity,
        run: () => removeHostContainers(host.docker, config.hostId, ['exports']),
      },
      { name: 'forwarding rules', timeoutMs: Infinity, run: () => peers.closeForwarding() },
      { name: 'subscription', timeoutMs: REDIS_CLOSE_MS, run: () => subscription.close() },
      {
        name: 'redis',
        timeoutMs: Infinity,
        run: () => within(redis.quit(), REDIS_CLOSE_MS).finally(() => redis.disconnect()),
      },
      { name: 'state dir lock', timeoutMs: Infinity, run: () => stateLock.release() },
    ],
  })
  let closing: Promise<ShutdownResult> | undefined
  return {
    registry,
    instances,
    reaper,
    prepared,
    close() {
      closing ??= shutdown().then((result) => {
        logger.info('stopped')
        return result
      })
      return closing
    },
  }
}

async function loadFunctions(dir: string, logger: Logger): Promise<readonly FunctionDef[]> {
  const set = await loadFunctionDefs(dir)
  for (const p of set.problems)
    logger.error({ fn: p.name, file: p.file, err: p.error.message }, 'function skipped')
  return set.functions
}
