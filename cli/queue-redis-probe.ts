/**
 * Reads what a queue Redis says about itself: its version and AOF settings. One connection attempt,
 * no retry loop, bounded: the callers report (doctor) or refuse to start (`initless up`), they do
 * not wait for Redis.
 */
import { errorMessage, InitlessError } from '../shared/errors.ts'
import { createRedis, redisPersistence, redisVersion } from '../shared/redis.ts'
import {
  describeQueueRedis,
  durableFix,
  isDurable,
  queueRedis,
  queueRedisEnv,
  type QueueRedisState,
} from './queue-redis.ts'

export async function probeQueueRedis(url: string, timeoutMs = 3000): Promise<QueueRedisState> {
  const redis = createRedis(url, { lazy: true, name: 'initless-queue-probe' })
  redis.options.retryStrategy = () => null
  redis.options.connectTimeout = timeoutMs
  let lastError: unknown
  redis.on('error', (err) => (lastError = err))
  try {
    await redis.connect().catch((err: unknown) => {
      throw lastError ?? err
    })
    const [version, persistence] = await Promise.all([redisVersion(redis), redisPersistence(redis)])
    return { version, ...persistence }
  } finally {
    redis.disconnect()
  }
}

/**
 * The queue Redis `initless up` gives its gateway (cli/queue-redis.ts), checked first: one that
 * does not answer stops the start (ERR_ASYNC_UNAVAILABLE, with the fix) rather than a gateway that
 * answers every asynchronous request with 503; one that is not durable starts with a warning.
 * Returns the environment to start the gateway with and the lines to show.
 */
export async function checkQueueRedis(
  processEnv: Readonly<Record<string, string | undefined>>,
  probe: (url: string) => Promise<QueueRedisState> = probeQueueRedis,
): Promise<{ env: Record<string, string>; lines: string[] }> {
  const queue = queueRedis(processEnv)
  const where = describeQueueRedis(queue)
  const env = queueRedisEnv(queue)
  // The registry's Redis is the gateway's own concern (it waits for it and says so in /readyz).
  if (queue.source === 'registry') return { env, lines: [`asynchronous invocations: queues on ${where}`] }
  const state = await probe(queue.url).catch((err: unknown) => {
    throw new InitlessError(
      'ERR_ASYNC_UNAVAILABLE',
      `the queue Redis at ${where} does not answer (${errorMessage(err)}): ` +
        (queue.source === 'provisioned'
          ? 'run `bash scripts/provision.sh` (it starts it), or set INITLESS_ASYNC_REDIS_URL ' +
            '(to INITLESS_REDIS_URL to keep the queues on the registry’s Redis: docs/async.md)'
          : 'start it or correct INITLESS_ASYNC_REDIS_URL'),
    )
  })
  const policy = `appendonly ${state.appendonly ?? '?'}, appendfsync ${state.appendfsync ?? '?'}`
  return {
    env,
    lines: [
      `asynchronous invocations: queues on ${where}, ${policy}`,
      ...(isDurable(state) ? [] : [`warning: a 202 is not fsynced there: ${durableFix(queue)}`]),
    ],
  }
}
