/**
 * The secret store in Redis: one HASH per scope (`keys.secrets`), name -> JSON of the sealed value
 * and its update time, and a SET of scopes (`keys.secretScopes`). Values are sealed by
 * secret-crypto.ts before they leave the process and opened only by executors, just before a
 * restore; listing reads update times only.
 */
import type { Redis } from 'ioredis'
import { KEY_PREFIX, keys } from './contracts.ts'
import type { SealedValue, SecretSealer } from './secret-crypto.ts'
import type { SecretInfo, SecretRef, SecretStore, SecretValue } from './secrets.ts'

interface StoredSecret {
  readonly sealed: SealedValue
  readonly updatedAt: number
}

/** HDEL, and drop the scope from the set once its hash is empty: one atomic step. */
const REMOVE = `
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return n`

export interface RedisSecretStoreDeps {
  readonly redis: Redis
  readonly sealer: SecretSealer
  /** Replaces KEY_PREFIX in every key (tests use a unique prefix each). */
  readonly prefix?: string
  readonly now?: () => number
}

function parse(json: string | null | undefined): StoredSecret | undefined {
  if (!json) return undefined
  try {
    const s = JSON.parse(json) as StoredSecret
    return typeof s.updatedAt === 'number' && typeof s.sealed === 'object' ? s : undefined
  } catch {
    return undefined
  }
}

/** Group refs by scope, keeping their order within each. */
function byScope(refs: readonly SecretRef[]): Map<string, SecretRef[]> {
  const out = new Map<string, SecretRef[]>()
  for (const r of refs) out.set(r.scope, [...(out.get(r.scope) ?? []), r])
  return out
}

export function createRedisSecretStore(deps: RedisSecretStoreDeps): SecretStore {
  const { redis, sealer } = deps
  const prefix = deps.prefix ?? KEY_PREFIX
  const k = (key: string) => (prefix === KEY_PREFIX ? key : prefix + key.slice(KEY_PREFIX.length))
  const now = deps.now ?? Date.now

  /** One HMGET per scope, in one round trip. */
  async function fetch(refs: readonly SecretRef[]): Promise<(StoredSecret | undefined)[]> {
    const groups = [...byScope(refs)]
    const pipeline = redis.pipeline()
    for (const [scope, list] of groups) pipeline.hmget(k(keys.secrets(scope)), ...list.map((r) => r.name))
    const results = (await pipeline.exec()) ?? []
    const found = new Map<string, StoredSecret | undefined>()
    groups.forEach(([scope, list], i) => {
      const [err, values] = results[i] ?? [new Error('no answer'), null]
      if (err) throw err
      list.forEach((r, j) => found.set(`${scope}/${r.name}`, parse((values as (string | null)[])[j])))
    })
    return refs.map((r) => found.get(`${r.scope}/${r.name}`))
  }

  return {
    async set(ref, value) {
      const updatedAt = now()
      const record: StoredSecret = { sealed: sealer.seal(ref, value), updatedAt }
      const res = await redis
        .multi()
        .hset(k(keys.secrets(ref.scope)), ref.name, JSON.stringify(record))
        .sadd(k(keys.secretScopes()), ref.scope)
        .exec()
      const [err, added] = res?.[0] ?? [new Error('transaction aborted'), 0]
      if (err) throw err
      return { created: Number(added) === 1, updatedAt }
    },

    async list(scope) {
      const scopes = scope ? [scope] : (await redis.smembers(k(keys.secretScopes()))).sort()
      const pipeline = redis.pipeline()
      for (const s of scopes) pipeline.hgetall(k(keys.secrets(s)))
      const results = (await pipeline.exec()) ?? []
      return scopes.flatMap((s, i) => {
        const hash = (results[i]?.[1] ?? {}) as Record<string, string>
        return Object.keys(hash)
          .sort()
          .map((name): SecretInfo => ({ scope: s, name, updatedAt: parse(hash[name])?.updatedAt ?? 0 }))
      })
    },

    async remove(ref) {
      const n = await redis.eval(
        REMOVE,
        2,
        k(keys.secrets(ref.scope)),
        k(keys.secretScopes()),
        ref.name,
        ref.scope,
      )
      return Number(n) === 1
    },

    async read(refs) {
      if (!refs.length) return { values: [], missing: [] }
      const stored = await fetch(refs)
      const values: SecretValue[] = []
      const missing: SecretRef[] = []
      refs.forEach((ref, i) => {
        const s = stored[i]
        if (s) values.push({ ...ref, value: sealer.open(ref, s.sealed) })
        else missing.push(ref)
      })
      return { values, missing }
    },

    async missing(refs) {
      if (!refs.length) return []
      const groups = [...byScope(refs)]
      const pipeline = redis.pipeline()
      for (const [scope, list] of groups)
        for (const r of list) pipeline.hexists(k(keys.secrets(scope)), r.name)
      const results = (await pipeline.exec()) ?? []
      const flat = groups.flatMap(([, list]) => list)
      return flat.filter((_, i) => Number(results[i]?.[1] ?? 0) !== 1)
    },
  }
}
