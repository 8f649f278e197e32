/**
 * The executor process: composition root. Reads the configuration, wires the host adapters, the
 * registry and the BullMQ worker, reconciles what a previous run left, prepares every function
 * (image, snapshot, pool) and serves restore jobs until SIGINT/SIGTERM.
 */
import { HEARTBEAT_INTERVAL_MS, type ExecutorHeartbeat } from '../shared/contracts.ts'
import { errorMessage, InitlessError } from '../shared/errors.ts'
import { loadFunctionDefs, type FunctionDef } from '../shared/functions.ts'
import { createLogger } from '../shared/logger.ts'
import { createRedis } from '../shared/redis.ts'
import { createRedisRegistry } from '../shared/registry.ts'
import { canonicalCidr } from '../shared/subnet.ts'
import { loadExecutorConfig } from './config.ts'
import { createHost, createHostInstanceManager } from './host.ts'
import { createPeerRouter, networkIdentity } from './peers.ts'
import { formatRestorePath } from './restore-path.ts'
import { createReaper, reconcile, removeHostContainers, snapshotUsage } from './reaper.ts'
import { lockStateDir } from './state-lock.ts'
import { createRestoreWorker } from './worker.ts'

const config = loadExecutorConfig(process.env)
const logger = createLogger({ level: config.INITLESS_LOG_LEVEL, name: 'executor' })
// Before anything touches the state dir: reconciling it under a running executor would tear that
// executor's instances down (state-lock.ts).
const stateLock = await lockStateDir(config.INITLESS_STATE_DIR, { hostId: config.hostId }).catch(
  (err: unknown) => {
    logger.fatal({ code: (err as { code?: unknown }).code, err: errorMessage(err) }, 'cannot start')
    process.exit(1)
  },
)
const host = createHost(config, logger)
const redis = createRedis(config.INITLESS_REDIS_URL, { name: 'initless-executor' })
redis.on('error', (err: Error) => logger.debug({ err: err.message }, 'redis connection error'))
const registry = createRedisRegistry({ redis, logger, prefix: config.INITLESS_KEY_PREFIX })

const set = await loadFunctionDefs(config.INITLESS_FUNCTIONS_DIR)
for (const p of set.problems)
  logger.error({ fn: p.name, file: p.file, err: p.error.message }, 'function skipped')
const functions: readonly FunctionDef[] = set.functions

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
const holder = await registry.beat(heartbeat())
if (holder) {
  const err = subnetInUse(holder)
  logger.fatal({ code: err.code, err: err.message }, 'cannot start')
  await stateLock.release()
  process.exit(1)
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
timers.push(
  setInterval(() => {
    void snapshotUsage()
      .then((inUse) => host.store.collect(inUse))
      .then((removed) => removed.length && logger.info({ removed }, 'retired snapshots removed'))
      .catch((err: unknown) => logger.warn({ err: errorMessage(err) }, 'snapshot collection failed'))
  }, 30_000),
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
void (async () => {
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

/** `promise`, or a rejection after `ms`. */
function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms).unref()
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

let shuttingDown: Promise<void> | undefined
function shutdown(signal: string): Promise<void> {
  shuttingDown ??= (async () => {
    logger.info({ signal }, 'shutting down')
    for (const t of timers) clearInterval(t)
    const deadline = new Promise<'timeout'>((r) =>
      setTimeout(() => r('timeout'), config.INITLESS_SHUTDOWN_TIMEOUT).unref(),
    )
    // Let running restores finish within the deadline; past it, close without waiting: their
    // locks lapse and BullMQ hands the jobs to another executor (stalled-job recovery).
    if ((await Promise.race([worker.close(false).then(() => 'done' as const), deadline])) === 'timeout') {
      logger.warn('restores still running at the deadline: handing them back to the queue')
      await within(worker.close(true), 5_000).catch(() => undefined)
    }
    // With Redis out of reach its steps would wait for it: they get a few seconds, so that the
    // instances are stopped (and nothing is left) whatever Redis does.
    const steps: [string, () => Promise<unknown>][] = [
      ['min instances', () => Promise.race([reaper.settled(), deadline])],
      ['instances', () => instances.stopAll('executor shutdown')],
      // Templates hold checkpoints in Docker's storage; reconcile would remove them at the next start.
      ['docker templates', () => host.runtimes.docker.discard()],
      // A preparation still running (a bake) may be exporting an image: its container would
      // wait for the next start's reconcile (seen: left by a test that stopped a preparing host).
      ['export containers', () => removeHostContainers(host.docker, config.hostId, ['exports'])],
      ['forwarding rules', () => peers.closeForwarding()],
      ['subscription', () => within(subscription.close(), 5_000)],
      ['redis', () => within(redis.quit(), 5_000).finally(() => redis.disconnect())],
      ['state dir lock', () => stateLock.release()],
    ]
    for (const [name, step] of steps) {
      await step().catch((err: unknown) =>
        logger.error({ step: name, err: errorMessage(err) }, 'shutdown step failed'),
      )
    }
    logger.info('stopped')
  })()
  return shuttingDown
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    void shutdown(signal).finally(() => process.exit(0))
  })
}
