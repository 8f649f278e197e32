/**
 * Redis connections (ioredis). BullMQ workers and QueueEvents block on Redis commands, so their
 * connections need `maxRetriesPerRequest: null`; plain clients keep a bound so a Redis outage turns
 * into errors instead of requests that hang forever.
 */
import { Redis, type RedisOptions } from 'ioredis'

export type { Redis }

export function createRedis(
  url: string,
  opts: { blocking?: boolean; name?: string; lazy?: boolean } = {},
): Redis {
  const options: RedisOptions = {
    maxRetriesPerRequest: opts.blocking ? null : 2,
    enableReadyCheck: true,
    lazyConnect: opts.lazy ?? false,
    connectionName: opts.name ?? 'initless',
    // Reconnect forever with a capped back-off: a Redis restart must not need an initless restart.
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 6), 2000),
  }
  return new Redis(url, options)
}

/** `redis_version` from INFO server. */
export async function redisVersion(client: Redis): Promise<string> {
  const info = await client.info('server')
  const m = /redis_version:(\S+)/.exec(info)
  if (!m?.[1]) throw new Error('INFO server did not report redis_version')
  return m[1]
}
