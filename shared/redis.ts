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

/**
 * The AOF settings (`CONFIG GET appendonly`, `appendfsync`); undefined fields where CONFIG is
 * refused (managed Redis services often rename or disable it).
 */
export async function redisPersistence(
  client: Redis,
): Promise<{ appendonly?: string; appendfsync?: string }> {
  const get = async (key: string) => {
    const reply = (await client.config('GET', key).catch(() => [])) as string[]
    return reply[1]
  }
  const [appendonly, appendfsync] = await Promise.all([get('appendonly'), get('appendfsync')])
  return {
    ...(appendonly === undefined ? {} : { appendonly }),
    ...(appendfsync === undefined ? {} : { appendfsync }),
  }
}

/** Delete every key matching any of `patterns` (SCAN, never KEYS: safe on a shared Redis). */
export async function deleteKeys(client: Redis, patterns: readonly string[]): Promise<void> {
  for (const pattern of patterns) {
    let cursor = '0'
    do {
      const [next, found] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 500)
      cursor = next
      if (found.length) await client.del(...found)
    } while (cursor !== '0')
  }
}

/** A subscription to one channel: close() drops its connection. */
export interface ChannelSubscription {
  close(): Promise<void>
}

/**
 * Subscribe to `channel` on a duplicate of `redis` (a subscribed connection can run nothing
 * else). It queues commands while disconnected and retries forever; ioredis re-subscribes on
 * reconnect, and `onResync` is called then: messages may have been missed meanwhile.
 */
export async function subscribeChannel(
  redis: Redis,
  channel: string,
  handlers: {
    readonly onMessage: (message: string) => void
    readonly onResync?: () => void
    readonly onError?: (err: Error) => void
  },
): Promise<ChannelSubscription> {
  const sub = redis.duplicate({
    enableOfflineQueue: true,
    maxRetriesPerRequest: null,
    commandTimeout: undefined,
  })
  let isSubscribed = false
  sub.on('error', (err: Error) => handlers.onError?.(err))
  sub.on('ready', () => {
    if (isSubscribed) handlers.onResync?.()
  })
  sub.on('message', (ch: string, message: string) => {
    if (ch === channel) handlers.onMessage(message)
  })
  await sub.subscribe(channel)
  isSubscribed = true
  return {
    close() {
      // No QUIT: while Redis is down it would wait for a reconnect that may never come.
      sub.removeAllListeners('message')
      sub.disconnect()
      return Promise.resolve()
    },
  }
}
