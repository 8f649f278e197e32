/**
 * An executor assembled in-process from the real parts — Docker, runc, CRIU, Redis, BullMQ — with
 * a unique queue name and registry prefix per test, plus a producer to enqueue restores the way the
 * gateway does (reserve in the registry, then enqueue with the instance id as job id).
 */
import { randomBytes, randomUUID } from 'node:crypto'
import { Queue, QueueEvents } from 'bullmq'
import { createHostInstanceManager } from '../../executor/host.ts'
import type { InstanceManager } from '../../executor/instances.ts'
import { createReaper, type Reaper } from '../../executor/reaper.ts'
import { createRestoreWorker, type RestoreWorker } from '../../executor/worker.ts'
import type { RestoreJobData, RestoreJobResult, RuntimeKind } from '../../shared/contracts.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { createRedis, type Redis } from '../../shared/redis.ts'
import { createRedisRegistry, type InstanceRegistry } from '../../shared/registry.ts'
import type { TestHost } from './host.ts'
import { REDIS_URL } from './integration.ts'

export interface TestExecutor {
  readonly queueName: string
  readonly prefix: string
  readonly registry: InstanceRegistry
  readonly instances: InstanceManager
  readonly reaper: Reaper
  /** Reserve an instance and enqueue its restore; resolves with the job's result. */
  restore(fn: string, opts?: { runtime?: RuntimeKind; noPool?: boolean }): Promise<RestoreJobResult>
  close(): Promise<void>
}

export async function createTestExecutor(
  th: TestHost,
  functions: readonly FunctionDef[],
): Promise<TestExecutor> {
  const logger = createSilentLogger()
  const queueName = `test-${randomUUID()}`
  const prefix = `test-${randomBytes(6).toString('hex')}`
  const redis = createRedis(REDIS_URL)
  const connections: Redis[] = [
    redis,
    createRedis(REDIS_URL, { blocking: true }),
    createRedis(REDIS_URL, { blocking: true }),
  ]
  const registry = createRedisRegistry({ redis, logger, prefix })
  const hostId = `test-${th.config.hostId}`
  const instances = createHostInstanceManager(th.host, {
    hostId,
    functions: () => functions,
    registry,
    logger,
  })
  const worker: RestoreWorker = createRestoreWorker({
    redisUrl: REDIS_URL,
    queueName,
    concurrency: 4,
    start: (job) => instances.start(job),
    onFailed: async (job) => {
      await registry.withdraw(job.fn, job.instanceId)
    },
    logger,
  })
  const queue = new Queue<RestoreJobData, RestoreJobResult>(queueName, { connection: connections[1]! })
  const events = new QueueEvents(queueName, { connection: connections[2]! })
  await events.waitUntilReady()
  const reaper = createReaper({
    instances,
    registry,
    functions: () => functions,
    now: Date.now,
    logger,
    hostId,
  })
  return {
    queueName,
    prefix,
    registry,
    instances,
    reaper,
    async restore(fn, opts = {}) {
      const manifest = functions.find((f) => f.name === fn)?.manifest
      const instanceId = `i${randomBytes(6).toString('hex')}`
      const reserved = await registry.reserve(fn, manifest?.scaling.maxInstances ?? 5, instanceId)
      if (!reserved) throw new Error(`${fn}: no room for another instance`)
      const job = await queue.add(
        'restore',
        { fn, instanceId, traceId: randomUUID(), enqueuedAt: Date.now(), reason: 'demand', ...opts },
        { jobId: instanceId, attempts: 1 },
      )
      return job.waitUntilFinished(events, 180_000)
    },
    async close() {
      await worker.close()
      await instances.stopAll('test over')
      await events.close()
      await queue.obliterate({ force: true }).catch(() => undefined)
      await queue.close()
      for (const fn of functions) {
        await redis.del(
          `${prefix}:instances:${fn.name}`,
          `${prefix}:lastuse:${fn.name}`,
          `${prefix}:inflight:${fn.name}`,
        )
      }
      for (const c of connections) c.disconnect()
    },
  }
}
