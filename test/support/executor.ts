/**
 * An executor started in-process with startExecutor (executor/start.ts, the same wiring as the
 * executor process) on a test host's state dir, with a unique queue name, registry prefix and host
 * id per test, plus the restore client the gateway uses (shared/restore-client.ts) to reserve an
 * instance, enqueue its restore and await it. Its reaper runs only when a test ticks it.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import { loadExecutorConfig, type ExecutorConfig } from '../../executor/config.ts'
import type { InstanceManager } from '../../executor/instances/instances.ts'
import type { Reaper } from '../../executor/instances/reaper.ts'
import { startExecutor } from '../../executor/start.ts'
import { createBullmqRestoreQueue } from '../../shared/bullmq-restore-queue.ts'
import type { RestoreJobOptions, RestoreJobResult } from '../../shared/contracts.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { createRedis, deleteKeys } from '../../shared/redis.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import { createRestoreClient } from '../../shared/restore-client.ts'
import type { TestHost } from './host.ts'
import { REDIS_URL } from './integration.ts'

export interface TestExecutor {
  readonly config: ExecutorConfig
  readonly queueName: string
  readonly prefix: string
  readonly registry: InstanceRegistry
  readonly instances: InstanceManager
  readonly reaper: Reaper
  /** Reserve an instance and enqueue its restore; resolves with the job's result. */
  restore(fn: string, opts?: RestoreJobOptions): Promise<RestoreJobResult>
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
    // Short: a test that corrupts a snapshot first lets a recheck an earlier start scheduled land.
    INITLESS_RECHECK_DELAY: '100ms',
    // The tests tick the reaper themselves.
    INITLESS_REAP_INTERVAL: '24h',
  })
  const logger = createSilentLogger()
  const executor = await startExecutor(config, {
    logger,
    redis: createRedis(REDIS_URL, { name: 'initless-test-executor' }),
    functions,
  })
  await executor.prepared
  const { registry } = executor
  const queue = createBullmqRestoreQueue({ redisUrl: REDIS_URL, logger, queueName })
  await queue.ready()
  const restores = createRestoreClient({ registry, queue })
  return {
    config,
    queueName,
    prefix,
    registry,
    instances: executor.instances,
    reaper: executor.reaper,
    restore: (fn, options = {}) =>
      restores.restore(
        {
          fn,
          maxInstances: functions.find((f) => f.name === fn)?.manifest.scaling.maxInstances ?? 5,
          reason: 'demand',
          options,
        },
        180_000,
      ),
    async close() {
      await executor.close()
      await queue.close()
      const redis = createRedis(REDIS_URL, { name: 'initless-test-cleanup' })
      try {
        await deleteKeys(redis, [`${prefix}:*`, `bull:${queueName}:*`])
      } finally {
        redis.disconnect()
      }
    },
  }
}
