/**
 * Integration harness for the gateway tests: a Redis reachability check (skip by hand, fail in CI),
 * a stand-in executor (a real BullMQ worker on the restore queue that starts a real HTTP server per
 * instance and marks it ready in the registry), and the gateway started as gateway/main.ts starts it,
 * with a unique key prefix and queue name, listening on 127.0.0.1:0.
 */
import { randomUUID } from 'node:crypto'
import { UnrecoverableError, Worker, type Job } from 'bullmq'
import {
  encodeRestoreFailure,
  type ExecutorHeartbeat,
  type RestoreFailure,
  type RestoreJobData,
  type RestoreJobResult,
} from '../shared/contracts.ts'
import { createSilentLogger, type Logger } from '../shared/logger.ts'
import type { Manifest } from '../shared/manifest.ts'
import { createRedis, deleteKeys, type Redis } from '../shared/redis.ts'
import { createRedisRegistry, type InstanceRegistry } from '../shared/registry.ts'
import { createBullmqRestoreQueue } from '../shared/bullmq-restore-queue.ts'
import { createStaticCatalog } from '../gateway/catalog.ts'
import { createNodeForwarder } from '../gateway/node-forwarder.ts'
import { loadGatewayConfig } from '../gateway/config.ts'
import type { InstancePool } from '../gateway/instance-pool.ts'
import { startGateway as startGatewayProcess } from '../gateway/start.ts'
import { startEchoServer, TEST_PHASES, type EchoServer } from '../gateway/test-support.ts'
import { createUpstreamAgents } from '../gateway/upstream-agents.ts'
import { isCI, REDIS_URL } from './support/integration.ts'

export { REDIS_URL }

/**
 * Undefined when Redis answers at `url`; otherwise the reason to skip. With CI=true an unreachable
 * Redis throws instead: integration tests never skip in CI.
 */
export async function redisSkipReason(url = REDIS_URL): Promise<string | undefined> {
  const client = createRedis(url, { lazy: true, name: 'initless-test-probe' })
  client.on('error', () => undefined)
  try {
    await client.connect()
    await client.ping()
    return undefined
  } catch (err) {
    const reason = `Redis unreachable at ${url} (${err instanceof Error ? err.message : String(err)})`
    if (isCI) throw new Error(`${reason}; CI=true, so integration tests fail instead of skipping`)
    return `${reason}; start redis-server to run this test`
  } finally {
    client.disconnect()
  }
}

export interface Isolation {
  /** Registry key prefix (replaces `initless`). */
  readonly prefix: string
  /** BullMQ queue name (and key prefix). */
  readonly queueName: string
}

export function isolation(): Isolation {
  const id = randomUUID()
  return { prefix: `test-${id}`, queueName: `test-${id}` }
}

/** Delete every key of an isolation (registry keys and the queue's). */
export async function cleanUp(redis: Redis, iso: Isolation): Promise<void> {
  await deleteKeys(redis, [`${iso.prefix}:*`, `bull:${iso.queueName}:*`])
}

export interface ExecutorOptions {
  /** Time a restore takes, ms (or per job). Default 30. */
  readonly restoreMs?: number | ((job: RestoreJobData) => number)
  /** Decide per job whether it fails, and how (reported as the executor's worker reports it). */
  readonly failWith?: (job: RestoreJobData) => RestoreFailure | undefined
  /** The function version its instances run (the active one, for functions in the function registry). */
  readonly version?: string
}

export interface FakeExecutor {
  readonly hostId: string
  /** Jobs processed so far. */
  readonly jobs: RestoreJobData[]
  readonly servers: Map<string, EchoServer>
  close(): Promise<void>
}

/** A stand-in for the executor: consumes restore jobs, serves each instance from a real server. */
export function startFakeExecutor(
  iso: Isolation,
  opts: ExecutorOptions & { readonly redisUrl?: string } = {},
): FakeExecutor {
  const url = opts.redisUrl ?? REDIS_URL
  const hostId = `exec-${randomUUID().slice(0, 8)}`
  const redis = createRedis(url, { name: 'test-executor' })
  redis.on('error', () => undefined)
  const registry = createRedisRegistry({ redis, logger: createSilentLogger(), prefix: iso.prefix })
  const jobs: RestoreJobData[] = []
  const servers = new Map<string, EchoServer>()
  const connection = createRedis(url, { blocking: true, name: 'test-executor-worker' })
  connection.on('error', () => undefined)
  const worker = new Worker<RestoreJobData, RestoreJobResult>(
    iso.queueName,
    async (job: Job<RestoreJobData>) => {
      const data = job.data
      jobs.push(data)
      const delay = typeof opts.restoreMs === 'function' ? opts.restoreMs(data) : (opts.restoreMs ?? 30)
      await new Promise((r) => setTimeout(r, delay))
      const failure = opts.failWith?.(data)
      if (failure) {
        await registry.withdraw(data.fn, data.instanceId)
        const reason = encodeRestoreFailure(failure)
        throw failure.retryable ? new Error(reason) : new UnrecoverableError(reason)
      }
      const server = await startEchoServer(data.instanceId)
      servers.set(data.instanceId, server)
      const isReady = await registry.markReady(
        data.fn,
        data.instanceId,
        server.address,
        'lazy',
        TEST_PHASES,
        hostId,
        opts.version,
      )
      if (!isReady) {
        await server.close()
        throw new UnrecoverableError(`reservation ${data.instanceId} was withdrawn`)
      }
      return {
        instanceId: data.instanceId,
        fn: data.fn,
        address: server.address,
        hostId,
        runtime: 'lazy',
        pooled: false,
        phases: TEST_PHASES,
        snapshotBytes: 0,
      }
    },
    { connection, concurrency: 50 },
  )
  worker.on('error', () => undefined)
  const beat = () => {
    const hb: ExecutorHeartbeat = { hostId, at: Date.now(), pid: process.pid, functions: [] }
    registry.beat(hb).catch(() => undefined)
  }
  beat()
  const timer = setInterval(beat, 500)
  return {
    hostId,
    jobs,
    servers,
    async close() {
      clearInterval(timer)
      await worker.close(true).catch(() => undefined)
      await Promise.all([...servers.values()].map((s) => s.close()))
      connection.disconnect()
      redis.disconnect()
    },
  }
}

export interface RunningGateway {
  readonly url: string
  readonly pool: InstancePool
  readonly registry: InstanceRegistry
  readonly redis: Redis
  close(): Promise<void>
}

/**
 * The gateway as gateway/main.ts starts it (startGateway: real Redis, real BullMQ, the node:http forwarder, a
 * socket on 127.0.0.1:0), minus the signal handling, serving `manifests`.
 */
export async function startGateway(
  iso: Isolation,
  manifests: readonly Manifest[],
  opts: {
    readonly redisUrl?: string
    readonly maxBodyBytes?: number
    readonly refreshIntervalMs?: number
    /** More gateway settings (INITLESS_*), over the harness's. */
    readonly env?: Readonly<Record<string, string>>
    /** The gateway's root logger (default: silent). */
    readonly logger?: Logger
  } = {},
): Promise<RunningGateway> {
  const url = opts.redisUrl ?? REDIS_URL
  const logger = opts.logger ?? createSilentLogger()
  const config = loadGatewayConfig({
    INITLESS_REDIS_URL: url,
    INITLESS_KEY_PREFIX: iso.prefix,
    INITLESS_QUEUE_NAME: iso.queueName,
    INITLESS_GATEWAY_HOST: '127.0.0.1',
    INITLESS_GATEWAY_PORT: '0',
    INITLESS_MAX_BODY: String(opts.maxBodyBytes ?? 1024 * 1024),
    INITLESS_REGISTRY_REFRESH: `${opts.refreshIntervalMs ?? 500}ms`,
    // Tests close with requests possibly in flight: cut them off at once.
    INITLESS_SHUTDOWN_TIMEOUT: '1s',
    ...opts.env,
  })
  const redis = createRedis(url, { name: 'test-gateway' })
  const agents = createUpstreamAgents()
  const gateway = await startGatewayProcess(config, {
    logger,
    redis,
    queue: createBullmqRestoreQueue({ redisUrl: url, logger, queueName: iso.queueName }),
    forwarder: createNodeForwarder({ agents, logger }),
    closeUpstream: () => agents.close(),
    catalog: createStaticCatalog(manifests),
  })
  return {
    url: `http://127.0.0.1:${gateway.address.port}`,
    pool: gateway.pool,
    registry: gateway.registry,
    redis,
    async close() {
      await gateway.close()
      redis.disconnect()
    },
  }
}
