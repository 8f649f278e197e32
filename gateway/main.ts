/**
 * Composition root of the gateway: the only gateway file that reads process.env, creates the
 * real clients (Redis, the BullMQ queue, the upstream proxy) and handles signals. The gateway
 * itself is startGateway (start.ts). With INITLESS_GATEWAY_WORKERS > 1 this process is the primary
 * (cluster/primary.ts) and every worker it forks runs this file again as one gateway worker.
 */
import cluster from 'node:cluster'
import { errorMessage, isInitlessError } from '../shared/errors.ts'
import { createLogger } from '../shared/logger.ts'
import { createRedis } from '../shared/redis.ts'
import { closeOnSignals } from '../shared/shutdown.ts'
import { createBullmqRestoreQueue } from '../shared/bullmq-restore-queue.ts'
import { loadGatewayConfig, type GatewayConfig } from './config.ts'
import { createNodeForwarder } from './node-forwarder.ts'
import { createBullmqInvocations } from './async/bullmq-invocations.ts'
import { startGatewayPrimary } from './cluster/primary.ts'
import { createGatewayWorker, type IpcPort } from './cluster/worker.ts'
import { startGateway } from './start.ts'
import { createUpstreamAgents } from './upstream-agents.ts'
import { createWebForwarder } from './web-forwarder.ts'

let config: GatewayConfig
try {
  config = loadGatewayConfig(process.env)
} catch (err) {
  console.error(isInitlessError(err) ? err.message : errorMessage(err))
  process.exit(1)
}

const logger = createLogger({ level: config.INITLESS_LOG_LEVEL, name: 'gateway' })

if (config.INITLESS_GATEWAY_WORKERS > 1 && cluster.isPrimary) {
  const primary = startGatewayPrimary({ cluster, workers: config.INITLESS_GATEWAY_WORKERS, logger })
  // The workers drain within the shutdown timeout; a little more for their exit.
  const deadlineMs = config.INITLESS_SHUTDOWN_TIMEOUT + 2000
  closeOnSignals(
    logger,
    Promise.resolve({ close: () => primary.close(deadlineMs).then((isClean) => ({ isClean })) }),
    ({ isClean }) => (isClean ? 0 : 1),
  )
} else {
  const worker = cluster.isWorker ? createGatewayWorker(process as unknown as IpcPort) : undefined
  const agents = createUpstreamAgents()
  const asyncRedisUrl = config.INITLESS_ASYNC_REDIS_URL ?? config.INITLESS_REDIS_URL
  const gateway = startGateway(config, {
    logger: worker ? logger.child({ worker: cluster.worker?.id }) : logger,
    redis: createRedis(config.INITLESS_REDIS_URL, { name: 'initless-gateway' }),
    queue: createBullmqRestoreQueue({
      redisUrl: config.INITLESS_REDIS_URL,
      logger,
      queueName: config.INITLESS_QUEUE_NAME,
      enqueueTimeoutMs: config.INITLESS_REDIS_TIMEOUT,
    }),
    forwarder: createNodeForwarder({ agents, logger }),
    async: {
      invocations: createBullmqInvocations({
        redisUrl: asyncRedisUrl,
        prefix: config.INITLESS_ASYNC_PREFIX,
        logger,
        timeoutMs: config.INITLESS_REDIS_TIMEOUT,
        deadTtlMs: config.INITLESS_ASYNC_DEAD_TTL,
        retryAfterMs: config.INITLESS_RETRY_AFTER,
      }),
      forwarder: createWebForwarder({ agents }),
      redisUrl: asyncRedisUrl,
    },
    closeUpstream: () => agents.close(),
    ...(worker ? { worker } : {}),
    onFatal: () => process.exit(1),
  }).catch((err: unknown) => {
    logger.fatal({ err: errorMessage(err) }, 'server error')
    process.exit(1)
  })

  const exitCode = ({ isClean }: { isClean: boolean }) => (isClean ? 0 : 1)
  closeOnSignals(logger, gateway, exitCode)
  // A worker whose primary is gone (killed) drains and exits rather than serve on unmanaged.
  if (worker) {
    process.on('disconnect', () => {
      logger.warn('gateway primary gone; shutting down')
      void gateway.then((g) => g?.close().then((r) => process.exit(exitCode(r))))
    })
  }
}
