/**
 * Composition root of the gateway: the only gateway file that reads process.env, creates clients,
 * opens the listening socket and handles signals.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { errorMessage, isInitlessError } from '../shared/errors.ts'
import { createLogger } from '../shared/logger.ts'
import { createRedis } from '../shared/redis.ts'
import { createRedisRegistry } from '../shared/registry.ts'
import { createGateway } from './app.ts'
import { createBullmqRestoreQueue } from './bullmq-restore-queue.ts'
import { loadFunctionCatalog } from './catalog.ts'
import { loadGatewayConfig, type GatewayConfig } from './config.ts'
import { createHttpProxyForwarder } from './http-proxy-forwarder.ts'
import { createInstancePool } from './instance-pool.ts'
import { createGatewayMetrics } from './metrics.ts'
import { createShutdown, drainServer } from './shutdown.ts'
import { createUpstreamAgents } from './upstream-agents.ts'

let config: GatewayConfig
try {
  config = loadGatewayConfig(process.env)
} catch (err) {
  console.error(isInitlessError(err) ? err.message : errorMessage(err))
  process.exit(1)
}

const logger = createLogger({ level: config.INITLESS_LOG_LEVEL, name: 'gateway' })
const redisTimeoutMs = config.INITLESS_REDIS_TIMEOUT
// While Redis is down commands fail after two reconnect attempts instead of waiting (cold requests
// get 503); ioredis keeps reconnecting forever.
const redis = createRedis(config.INITLESS_REDIS_URL, { name: 'initless-gateway' })
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
const queue = createBullmqRestoreQueue({
  redisUrl: config.INITLESS_REDIS_URL,
  logger,
  queueName: config.INITLESS_QUEUE_NAME,
  enqueueTimeoutMs: redisTimeoutMs,
})
const catalog = await loadFunctionCatalog({ dir: config.INITLESS_FUNCTIONS_DIR, logger })
const pool = createInstancePool({
  registry,
  queue,
  logger,
  refreshIntervalMs: config.INITLESS_REGISTRY_REFRESH,
  maxRestoreRetries: config.INITLESS_RESTORE_RETRIES,
  retryAfterMs: config.INITLESS_RETRY_AFTER,
})
logger.info({ redis: new URL(config.INITLESS_REDIS_URL).host }, 'waiting for redis')
await Promise.all([pool.start(), queue.ready()])
const agents = createUpstreamAgents()
const forwarder = createHttpProxyForwarder({ agents, logger })
const { listener } = createGateway({
  catalog,
  pool,
  registry,
  forwarder,
  logger,
  metrics: createGatewayMetrics({ stats: () => pool.stats(), processMetrics: true }),
  options: {
    maxBodyBytes: config.INITLESS_MAX_BODY,
    adminToken: config.INITLESS_ADMIN_TOKEN,
    trustProxy: config.INITLESS_TRUST_PROXY,
  },
})

const server = createServer(listener)
server.on('error', (err) => {
  logger.fatal({ err: errorMessage(err) }, 'server error')
  process.exit(1)
})
server.listen(config.INITLESS_GATEWAY_PORT, config.INITLESS_GATEWAY_HOST, () => {
  const info = server.address() as AddressInfo
  logger.info({ host: info.address, port: info.port }, 'gateway listening')
})

// In-flight requests get most of the deadline; the rest closes clients that never hang up.
const graceMs = Math.max(0, config.INITLESS_SHUTDOWN_TIMEOUT - 1000)
const shutdown = createShutdown({
  logger,
  deadlineMs: config.INITLESS_SHUTDOWN_TIMEOUT,
  steps: [
    { name: 'http server', run: () => drainServer(server, graceMs) },
    { name: 'instance pool', run: () => pool.close() },
    { name: 'proxy', run: () => (forwarder.close(), agents.close()) },
    { name: 'restore queue', run: () => queue.close() },
    { name: 'redis', run: () => redis.quit().catch(() => redis.disconnect()) },
  ],
})
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    logger.info({ signal }, 'shutting down')
    void shutdown().then(({ isClean }) => process.exit(isClean ? 0 : 1))
  })
}
