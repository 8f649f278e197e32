/**
 * Which Redis holds the asynchronous invocation queues when the CLI sets initless up (`initless up`,
 * `initless service install`) or checks it (`initless doctor`). A 202 promises that the invocation
 * survives a crash, so the queues belong on a Redis that fsyncs its AOF before every reply
 * (`appendfsync always`); the registry's Redis stays on `everysec`, since it takes several writes
 * per cold start (docs/async.md, durability). scripts/provision.sh starts such a queue Redis on
 * 127.0.0.1:6381 next to the registry's.
 *
 * The gateway itself never guesses: started without INITLESS_ASYNC_REDIS_URL it keeps the queues
 * on INITLESS_REDIS_URL.
 */
import { InitlessError } from '../shared/errors.ts'

/** Where scripts/provision.sh starts the queue Redis unless INITLESS_ASYNC_REDIS_PORT says otherwise. */
export const PROVISIONED_QUEUE_REDIS_PORT = 6381
/** The registry's Redis when INITLESS_REDIS_URL is unset (shared/config-schema.ts). */
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379'

export type QueueRedisSource =
  /** INITLESS_ASYNC_REDIS_URL, set by the operator: it always wins. */
  | 'setting'
  /** The queue Redis scripts/provision.sh starts on this host. */
  | 'provisioned'
  /** The registry's Redis itself (INITLESS_REDIS_URL on another host: there is no local default). */
  | 'registry'

export interface QueueRedis {
  readonly url: string
  readonly source: QueueRedisSource
}

type Env = Readonly<Record<string, string | undefined>>

/** A plain `redis://` URL of this host (127.0.0.0/8, localhost, [::1]): a Redis provision.sh starts. */
export function isLocalRedisUrl(url: string): boolean {
  if (!URL.canParse(url)) return false
  const u = new URL(url)
  return (
    u.protocol === 'redis:' &&
    (u.hostname === 'localhost' || u.hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(u.hostname))
  )
}

/** INITLESS_ASYNC_REDIS_PORT (provisioning's setting), validated; the default when unset. */
export function queueRedisPort(env: Env): number {
  const raw = env.INITLESS_ASYNC_REDIS_PORT
  if (raw === undefined || raw === '') return PROVISIONED_QUEUE_REDIS_PORT
  const port = Number(raw)
  if (!/^\d+$/.test(raw) || port < 1 || port > 65535)
    throw new InitlessError(
      'ERR_CONFIG_INVALID',
      `INITLESS_ASYNC_REDIS_PORT: expected a TCP port (1-65535), got '${raw}'`,
    )
  return port
}

/**
 * The queues' Redis for this environment: INITLESS_ASYNC_REDIS_URL when set; else, while the
 * registry's Redis is on this host, the provisioned queue Redis (127.0.0.1:INITLESS_ASYNC_REDIS_PORT,
 * default 6381); else the registry's Redis. A registry on another host means several hosts share
 * it, and their gateways must share the queues too (any gateway answers GET /invocations/<id>):
 * a Redis of this host would split them, so only the operator can name the shared queue Redis.
 */
export function queueRedis(env: Env): QueueRedis {
  const setting = env.INITLESS_ASYNC_REDIS_URL
  if (setting) return { url: setting, source: 'setting' }
  const registry = env.INITLESS_REDIS_URL || DEFAULT_REDIS_URL
  if (!isLocalRedisUrl(registry)) return { url: registry, source: 'registry' }
  return { url: `redis://127.0.0.1:${queueRedisPort(env)}`, source: 'provisioned' }
}

/** The environment that puts the gateway's queues there: INITLESS_ASYNC_REDIS_URL, or nothing. */
export function queueRedisEnv(queue: QueueRedis): Record<string, string> {
  return queue.source === 'registry' ? {} : { INITLESS_ASYNC_REDIS_URL: queue.url }
}

/** One line for people: where the queues are and why there. */
export function describeQueueRedis(queue: QueueRedis): string {
  switch (queue.source) {
    case 'setting':
      return `${queue.url} (INITLESS_ASYNC_REDIS_URL)`
    case 'provisioned':
      return `${queue.url} (the queue Redis scripts/provision.sh starts)`
    case 'registry':
      return `${queue.url} (the registry's Redis: it is on another host, so no local queue Redis is assumed)`
  }
}

/** What a queue Redis reports about itself (shared/redis.ts redisPersistence, plus its version). */
export interface QueueRedisState {
  readonly version: string
  /** `yes`/`no`; undefined: CONFIG GET is refused (a managed Redis may rename it). */
  readonly appendonly?: string
  readonly appendfsync?: string
}

/** Whether a 202 written there is on disk: the AOF on and fsynced before every reply. */
export function isDurable(state: QueueRedisState): boolean {
  return state.appendonly === 'yes' && state.appendfsync === 'always'
}

/** How to give the queues a durable Redis, for a warning about `queue`. */
export function durableFix(queue: QueueRedis): string {
  const set = `redis-cli -u ${queue.url} config set appendonly yes && redis-cli -u ${queue.url} config set appendfsync always (and the same in its configuration file)`
  switch (queue.source) {
    case 'provisioned':
      return `run \`bash scripts/provision.sh\` (it sets them on its queue Redis), or ${set}`
    case 'setting':
      return `${set}; docs/async.md, "Redis persistence"`
    case 'registry':
      return (
        'give the queues a Redis of their own with appendonly yes and appendfsync always and point ' +
        'INITLESS_ASYNC_REDIS_URL at it on every gateway (the registry’s Redis should stay on everysec: docs/async.md)'
      )
  }
}
