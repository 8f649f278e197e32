/**
 * The gateway process as a library: given its configuration and its clients, it loads the
 * function catalogue, starts the instance pool, listens, and returns a close() that shuts it all
 * down within the deadline. gateway/main.ts builds the real clients; tests may build their own.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import { errorMessage } from '../shared/errors.ts'
import type { Redis } from '../shared/redis.ts'
import { loadSecretSealer } from '../shared/secret-crypto.ts'
import { createRedisSecretStore } from '../shared/secret-store.ts'
import { createRedisInstanceDeaths } from '../shared/instance-deaths.ts'
import { createRedisRegistry, type InstanceRegistry } from '../shared/registry.ts'
import { createDeathReports } from './instance-deaths.ts'
import { createShutdown, type ShutdownResult } from '../shared/shutdown.ts'
import { createGateway } from './app.ts'
import { createClientGuard, guardedServerOptions } from './client-guard.ts'
import type { BullmqRestoreQueue } from '../shared/bullmq-restore-queue.ts'
import { createStaticCatalog, createWatchedCatalog, type FunctionCatalog } from './catalog.ts'
import { createBullmqDeployQueue } from '../shared/bullmq-deploy-queue.ts'
import { DEPLOY_QUEUE_SUFFIX } from '../shared/deploy-queue.ts'
import { activeVersion, createRedisFunctionRegistry } from '../shared/function-registry.ts'
import { createFunctionWatcher } from '../shared/function-watcher.ts'
import { createDeploys } from './deploys.ts'
import type { GatewayConfig } from './config.ts'
import type { Forwarder } from './forwarder.ts'
import { createInstancePool, type InstancePool } from './instance-pool.ts'
import type { BullmqInvocations } from './async/bullmq-invocations.ts'
import { startAsyncRole } from './async/role.ts'
import { createGatewayMetrics, dumpMetrics } from './metrics.ts'
import type { GatewayWorker } from './cluster/worker.ts'
import { drainServer } from './shutdown.ts'
import { startAccess } from './access/wiring.ts'

export interface GatewayDeps {
  readonly logger: Logger
  /** The registry's connection. */
  readonly redis: Redis
  readonly queue: Pick<BullmqRestoreQueue, 'enqueue' | 'onOutcome' | 'ready' | 'close'>
  readonly forwarder: Forwarder & { close(): void }
  /** Closes what the forwarder's connections come from (upstream agents). */
  readonly closeUpstream?: () => void
  /**
   * A fixed set of functions to serve (tests). Default: the function registry's active versions,
   * followed live, with the admin API's deploy, rollback and delete routes.
   */
  readonly catalog?: FunctionCatalog
  /**
   * Asynchronous invocations: their store (its own Redis may differ from the registry's) and a
   * forwarder that sends a fetch Request (web-forwarder.ts). Absent: no asynchronous invocations.
   */
  readonly async?: {
    readonly invocations: BullmqInvocations
    readonly forwarder: Forwarder
    /** The store's Redis, for the workers' connections. */
    readonly redisUrl: string
  }
  /**
   * This process is one worker of a multi-process gateway (cluster/worker.ts): its slots of every
   * instance come from the primary, and /metrics covers all workers. Absent: a gateway on its own.
   */
  readonly worker?: GatewayWorker
  /** The server failed after it started listening (the process should exit). */
  readonly onFatal?: (err: Error) => void
}

export interface RunningGateway {
  readonly address: AddressInfo
  readonly pool: InstancePool
  readonly registry: InstanceRegistry
  /** Drain requests, then close the pool, the proxy, the queue and Redis. Idempotent. */
  close(): Promise<ShutdownResult>
}

/** Start the gateway; resolves once it listens. It owns the clients in `deps` from then on. */
export async function startGateway(config: GatewayConfig, deps: GatewayDeps): Promise<RunningGateway> {
  const { logger, redis, queue, forwarder, worker } = deps
  // First: a bad key file fails the start before anything is opened.
  const sealer = await loadSecretSealer(config.INITLESS_SECRETS_KEY_FILE)
  // While Redis is down commands fail after two reconnect attempts instead of waiting (cold
  // requests get 503); ioredis keeps reconnecting forever.
  let isRedisDown = false
  redis.on('error', (err: Error) => {
    if (!isRedisDown) logger.warn({ err: err.message }, 'redis connection lost')
    isRedisDown = true
  })
  redis.on('ready', () => {
    if (isRedisDown) logger.info('redis connection restored')
    isRedisDown = false
  })
  const registry = createRedisRegistry({ redis, logger, prefix: config.INITLESS_KEY_PREFIX })
  const functions = deps.catalog
    ? undefined
    : createRedisFunctionRegistry({ redis, logger, prefix: config.INITLESS_KEY_PREFIX })
  const watcher = functions
    ? createFunctionWatcher({
        registry: functions,
        logger,
        refreshIntervalMs: config.INITLESS_REGISTRY_REFRESH,
      })
    : undefined
  const deployQueue = functions
    ? createBullmqDeployQueue({
        redisUrl: config.INITLESS_REDIS_URL,
        queueName: config.INITLESS_QUEUE_NAME + DEPLOY_QUEUE_SUFFIX,
        logger,
      })
    : undefined
  const catalog = deps.catalog ?? (watcher ? createWatchedCatalog(watcher) : createStaticCatalog([]))
  const pool = createInstancePool({
    registry,
    queue,
    logger,
    refreshIntervalMs: config.INITLESS_REGISTRY_REFRESH,
    maxRestoreRetries: config.INITLESS_RESTORE_RETRIES,
    retryAfterMs: config.INITLESS_RETRY_AFTER,
    ...(worker ? { slots: worker.slots } : {}),
  })
  logger.info({ redis: new URL(config.INITLESS_REDIS_URL).host }, 'waiting for redis')
  // Requests go to the active version from the moment this gateway hears of an activation.
  watcher?.onChange(({ fn, after }) => {
    if (after) pool.setVersion(fn, activeVersion(after)?.version)
    else pool.forget(fn)
  })
  const access = startAccess(config, { redis, logger })
  await Promise.all([pool.start(), queue.ready(), watcher?.start(), deployQueue?.ready(), access.start()])
  for (const r of watcher?.list() ?? []) pool.setVersion(r.name, r.active)
  const deaths = createRedisInstanceDeaths({ redis, prefix: config.INITLESS_KEY_PREFIX })
  const metrics = createGatewayMetrics({
    stats: () => pool.stats(),
    processMetrics: true,
    deathCounts: () => deaths.counts(),
    activeVersions: () =>
      (watcher?.list() ?? []).flatMap((r) => (r.active ? [{ fn: r.name, version: r.active }] : [])),
    ...(worker ? { render: () => worker.renderMetrics() } : {}),
  })
  worker?.serveMetrics(() => dumpMetrics(metrics))
  const asyncRole = deps.async && startAsyncRole(config, { ...deps.async, catalog, pool, logger, metrics })
  // Asynchronous invocations of functions deployed (or deleted) while this gateway runs.
  watcher?.onChange(({ fn, after }) => {
    const manifest = activeVersion(after)?.manifest
    if (manifest) asyncRole?.workers?.follow(manifest)
    else if (!after) asyncRole?.workers?.forget(fn)
  })
  const secretStore = createRedisSecretStore({ redis, sealer, prefix: config.INITLESS_KEY_PREFIX })
  const { listener } = createGateway({
    catalog,
    pool,
    registry,
    forwarder,
    deaths: createDeathReports({ deaths, registry }),
    logger,
    secrets: { store: secretStore, catalog, encrypted: sealer.encrypts },
    ...(functions && deployQueue
      ? {
          lifecycle: {
            functions,
            maxContextBytes: config.INITLESS_MAX_CONTEXT,
            onOutcome: (fn: string, outcome: string) => metrics.lifecycle(fn, outcome),
            seen: (fn: string) => watcher?.refreshOne(fn) ?? Promise.resolve(),
            secrets: secretStore,
            onDeleted: (fn: string) => access.revokeAll(fn),
            deploys: createDeploys({
              functions,
              queue: deployQueue,
              maxContextBytes: config.INITLESS_MAX_CONTEXT,
              deployTimeoutMs: config.INITLESS_DEPLOY_TIMEOUT,
            }),
          },
        }
      : {}),
    metrics,
    access: access.deps,
    ...(asyncRole ? { async: asyncRole.routes } : {}),
    options: {
      maxBodyBytes: config.INITLESS_MAX_BODY,
      adminToken: config.INITLESS_ADMIN_TOKEN,
      trustProxy: config.INITLESS_TRUST_PROXY,
    },
  })

  const guardOptions = {
    headersTimeoutMs: config.INITLESS_HEADERS_TIMEOUT,
    // Node refuses a request timeout shorter than the headers timeout.
    requestTimeoutMs: Math.max(config.INITLESS_REQUEST_TIMEOUT, config.INITLESS_HEADERS_TIMEOUT),
    maxHeaderBytes: config.INITLESS_MAX_HEADER_SIZE,
    maxConnectionsPerClient: config.INITLESS_MAX_CONNECTIONS_PER_CLIENT,
  }
  const guard = createClientGuard(guardOptions, logger)
  const server = createServer(guardedServerOptions(guardOptions), guard.wrap(listener))
  guard.install(server)
  const address = await new Promise<AddressInfo>((resolve, reject) => {
    server.once('error', reject)
    server.listen(config.INITLESS_GATEWAY_PORT, config.INITLESS_GATEWAY_HOST, () => {
      server.off('error', reject)
      resolve(server.address() as AddressInfo)
    })
  })
  server.on('error', (err) => {
    logger.fatal({ err: errorMessage(err) }, 'server error')
    deps.onFatal?.(err)
  })
  logger.info({ host: address.address, port: address.port }, 'gateway listening')
  worker?.listening()

  // In-flight requests get most of the deadline; the rest closes clients that never hang up.
  const graceMs = Math.max(0, config.INITLESS_SHUTDOWN_TIMEOUT - 1000)
  const close = createShutdown({
    logger,
    deadlineMs: config.INITLESS_SHUTDOWN_TIMEOUT,
    steps: [
      { name: 'http server', run: () => drainServer(server, graceMs) },
      // Before the pool: running attempts need it to finish. Past the deadline their locks lapse
      // and another gateway runs them again.
      {
        name: 'async workers',
        run: () => asyncRole?.workers?.close(),
        onTimeout: () => asyncRole?.workers?.close(true),
      },
      { name: 'instance pool', run: () => pool.close() },
      { name: 'proxy', run: () => (forwarder.close(), deps.closeUpstream?.()) },
      { name: 'restore queue', run: () => queue.close() },
      { name: 'function registry', run: () => Promise.all([watcher?.close(), deployQueue?.close()]) },
      { name: 'key cache', run: () => access.close() },
      { name: 'async queues', run: () => deps.async?.invocations.close() },
      { name: 'redis', run: () => redis.quit().catch(() => redis.disconnect()) },
    ],
  })
  return { address, pool, registry, close }
}
