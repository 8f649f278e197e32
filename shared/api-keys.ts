/**
 * Invocation keys (manifest `auth: { type: key }`): their format, their hashes and the Redis store
 * the admin API writes and every gateway follows (gateway/access/key-cache.ts).
 *
 * A key is `ilk_<id>_<secret>`: `id` 12 hex digits (public: listed, logged, used as the client of
 * per-client rate limits), `secret` 32 random bytes in base64url. Only SHA-256 of the whole key is
 * stored: the secret has 256 bits of entropy, so a fast hash leaves nothing to brute-force and a
 * slow password hash (bcrypt, scrypt) would only add its cost to every request (docs/security.md).
 *
 * Layout: a HASH per function (`<prefix>:apikeys:<fn>`, id -> JSON ApiKeyRecord), a SET of the
 * functions that have keys, and every change PUBLISHed on `<prefix>:apikey-events` by the same
 * MULTI or Lua script that makes it, so a subscriber never hears of a change before it is readable.
 */
import { createHash, randomBytes } from 'node:crypto'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { KEY_PREFIX } from './contracts.ts'
import { InitlessError } from './errors.ts'
import { subscribeChannel, type ChannelSubscription } from './redis.ts'

export const API_KEY_PREFIX = 'ilk_'
/** A whole key: prefix, 12 hex digits of id, `_`, 43 base64url characters (32 bytes). */
export const API_KEY_RE = /^ilk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$/
export const API_KEY_ID_RE = /^[0-9a-f]{12}$/
/** Keys one function may have at once. */
export const MAX_KEYS_PER_FUNCTION = 1000
/** Longest label of a key. */
export const MAX_KEY_NAME = 100

/** A stored key: never the key itself, only its hash. */
export interface ApiKeyRecord {
  readonly id: string
  readonly fn: string
  /** The operator's label, if one was given. */
  readonly name?: string
  /** Epoch ms. */
  readonly createdAt: number
  /** SHA-256 of the whole key, hex. */
  readonly hash: string
}

/** What the admin API shows of a key: everything but the hash. */
export type ApiKeyInfo = Omit<ApiKeyRecord, 'hash'>

export function keyInfo(r: ApiKeyRecord): ApiKeyInfo {
  const { hash: _hash, ...info } = r
  return info
}

/** SHA-256 of a whole key (the stored form). */
export function hashApiKey(key: string): Buffer {
  return createHash('sha256').update(key).digest()
}

/** A new key with a random id and secret. */
export function generateApiKey(): { readonly id: string; readonly key: string } {
  const id = randomBytes(6).toString('hex')
  return { id, key: `${API_KEY_PREFIX}${id}_${randomBytes(32).toString('base64url')}` }
}

/** A new key and the record the store keeps of it. */
export function newApiKey(
  fn: string,
  createdAt: number,
  name?: string,
): { key: string; record: ApiKeyRecord } {
  const { id, key } = generateApiKey()
  const record: ApiKeyRecord = {
    id,
    fn,
    createdAt,
    hash: hashApiKey(key).toString('hex'),
    ...(name ? { name } : {}),
  }
  return { key, record }
}

/** The id of a well-formed key; undefined for anything else. */
export function apiKeyId(key: string): string | undefined {
  return API_KEY_RE.exec(key)?.[1]
}

export interface ApiKeyEventListener {
  /** Keys of `fn` changed: re-read them. */
  onEvent(fn: string): void
  /** The subscription was re-established: events may have been missed. */
  onResync?(): void
}

export interface ApiKeyStore {
  /** Create a key for `fn`; the only moment the key itself exists outside its holder. */
  create(fn: string, opts?: { readonly name?: string }): Promise<{ key: string; record: ApiKeyRecord }>
  /** The keys of `fn`, oldest first. */
  list(fn: string): Promise<ApiKeyRecord[]>
  /** Functions that have at least one key. */
  functions(): Promise<string[]>
  /** Remove one key; false when `fn` has no key `id`. */
  revoke(fn: string, id: string): Promise<boolean>
  /** Remove every key of `fn` (the function was deleted); how many there were. */
  revokeAll(fn: string): Promise<number>
  subscribe(listener: ApiKeyEventListener): Promise<ChannelSubscription>
}

/** Parse one stored record; undefined when it does not read as one. */
export function parseKeyRecord(fn: string, json: string): ApiKeyRecord | undefined {
  try {
    const r = JSON.parse(json) as Partial<ApiKeyRecord>
    if (
      typeof r.id !== 'string' ||
      !API_KEY_ID_RE.test(r.id) ||
      typeof r.hash !== 'string' ||
      !/^[0-9a-f]{64}$/.test(r.hash) ||
      typeof r.createdAt !== 'number'
    )
      return undefined
    return { id: r.id, fn, createdAt: r.createdAt, hash: r.hash, ...(r.name ? { name: r.name } : {}) }
  } catch {
    return undefined
  }
}

export function sortKeys(records: ApiKeyRecord[]): ApiKeyRecord[] {
  return records.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1))
}

export function tooManyKeys(fn: string): InitlessError {
  return new InitlessError(
    'ERR_GATEWAY_BAD_REQUEST',
    `${fn} already has ${MAX_KEYS_PER_FUNCTION} keys: revoke some first`,
  )
}

// KEYS[1] the function's hash, KEYS[2] the set of functions with keys. ARGV: id, record, fn, max,
// channel, event. Returns 0 when the function already has `max` keys.
const CREATE = `
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1`

// KEYS as CREATE. ARGV: id, fn, channel, event.
const REVOKE = `
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1`

// KEYS as CREATE. ARGV: fn, channel, event.
const REVOKE_ALL = `
local n = redis.call('HLEN', KEYS[1])
if n == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n`

/** The Redis-backed key store. The caller owns `redis`; a subscription owns a duplicate. */
export function createRedisApiKeyStore(deps: {
  readonly redis: Redis
  readonly logger: Logger
  /** Replaces KEY_PREFIX in every key and the channel (tests, isolated stacks). */
  readonly prefix?: string
  readonly now?: () => number
}): ApiKeyStore {
  const { redis } = deps
  const log = deps.logger.child({ module: 'api-keys' })
  const prefix = deps.prefix ?? KEY_PREFIX
  const now = deps.now ?? Date.now
  const hashKey = (fn: string) => `${prefix}:apikeys:${fn}`
  const setKey = `${prefix}:apikey-fns`
  const channel = `${prefix}:apikey-events`
  const event = (fn: string) => JSON.stringify({ type: 'apikeys', fn })

  const list = async (fn: string) => {
    const hash = await redis.hgetall(hashKey(fn))
    const records: ApiKeyRecord[] = []
    for (const [field, json] of Object.entries(hash)) {
      const r = parseKeyRecord(fn, json)
      if (r && r.id === field) records.push(r)
      else log.warn({ fn, field }, 'unreadable key record')
    }
    return sortKeys(records)
  }

  return {
    async create(fn, opts = {}) {
      const { key, record } = newApiKey(fn, now(), opts.name)
      const ok = await redis.eval(
        CREATE,
        2,
        hashKey(fn),
        setKey,
        record.id,
        JSON.stringify(record),
        fn,
        MAX_KEYS_PER_FUNCTION,
        channel,
        event(fn),
      )
      if (Number(ok) !== 1) throw tooManyKeys(fn)
      return { key, record }
    },
    list,
    async functions() {
      return (await redis.smembers(setKey)).sort()
    },
    async revoke(fn, id) {
      const ok = await redis.eval(REVOKE, 2, hashKey(fn), setKey, id, fn, channel, event(fn))
      return Number(ok) === 1
    },
    async revokeAll(fn) {
      return Number(await redis.eval(REVOKE_ALL, 2, hashKey(fn), setKey, fn, channel, event(fn)))
    },
    subscribe: (listener) =>
      subscribeChannel(redis, channel, {
        onMessage(message) {
          let fn: unknown
          try {
            fn = (JSON.parse(message) as { fn?: unknown }).fn
          } catch {
            fn = undefined
          }
          if (typeof fn === 'string') listener.onEvent(fn)
          else log.warn({ message: message.slice(0, 200) }, 'ignored malformed key event')
        },
        ...(listener.onResync ? { onResync: () => listener.onResync?.() } : {}),
        onError: (err) => log.debug({ err: err.message }, 'subscriber connection error'),
      }),
  }
}
