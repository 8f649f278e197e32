/**
 * An executor started in-process with startExecutor (executor/start.ts, the same wiring as the
 * executor process) on a test host's adapters, with a unique queue name, registry prefix and host
 * id per test, plus a producer to enqueue restores the way the gateway does (reserve in the
 * registry, then enqueue with the instance id as job id). Its reaper runs only when a test ticks it.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import { Queue, QueueEvents } from 'bullmq'
import { loadExecutorConfig } from '../../executor/config.ts'
import type { InstanceManager } from '../../executor/instances.ts'
import type { Reaper } from '../../executor/reaper.ts'
import { startExecutor } from '../../executor/start.ts'
import type { RestoreJobData, RestoreJobResult, RuntimeKind } from '../../shared/contracts.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { createRedis, deleteKeys, type Redis } from '../../shared/redis.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
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

/** Resolves once every function is prepared (built, baked, pools filled). */
export async function createTestExecutor(
  th: TestHost,
  functions: readonly FunctionDef[],
): Promise<TestExecutor> {
  const queueName = `test-${randomUUID()}`
  const prefix = `test-${randomBytes(6).toString('hex')}`
  const config = loadExecutorConfig({
    ...process.env,
    INITLESS_STATE_DIR: th.config.INITLESS_STATE_DIR,
    INITLESS_HOST_ID: `test-${th.config.hostId}`,
    INITLESS_REDIS_URL: REDIS_URL,
    INITLESS_QUEUE_NAME: queueName,
    INITLESS_KEY_PREFIX: prefix,
    INITLESS_RESTORE_CONCURRENCY: '4',
    // The tests tick the reaper themselves.
    INITLESS_REAP_INTERVAL: '24h',
  })
  const executor = await startExecutor(config, {
    logger: createSilentLogger(),
    host: th.host,
    redis: createRedis(REDIS_URL, { name: 'initless-test-executor' }),
    functions,
  })
  await executor.prepared
  const connections: Redis[] = [
    createRedis(REDIS_URL, { blocking: true }),
    createRedis(REDIS_URL, { blocking: true }),
  ]
  const queue = new Queue<RestoreJobData, RestoreJobResult>(queueName, { connection: connections[0]! })
  const events = new QueueEvents(queueName, { connection: connections[1]! })
  await events.waitUntilReady()
  const { registry } = executor
  return {
    queueName,
    prefix,
    registry,
    instances: executor.instances,
    reaper: executor.reaper,
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
      await executor.close()
      await events.close()
      await queue.obliterate({ force: true }).catch(() => undefined)
      await queue.close()
      const redis = createRedis(REDIS_URL, { name: 'initless-test-cleanup' })
      try {
        await deleteKeys(redis, [`${prefix}:*`])
      } finally {
        redis.disconnect()
      }
      for (const c of connections) c.disconnect()
    },
  }
}
