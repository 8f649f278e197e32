/**
 * In-memory ApiKeyStore for unit tests: the Redis adapter's semantics (test/api-keys.test.ts runs
 * the same cases against Redis), events delivered asynchronously like pub/sub.
 */
import {
  MAX_KEYS_PER_FUNCTION,
  newApiKey,
  sortKeys,
  tooManyKeys,
  type ApiKeyEventListener,
  type ApiKeyRecord,
  type ApiKeyStore,
} from './api-keys.ts'

export interface FakeApiKeyStore extends ApiKeyStore {
  /** While false every operation rejects, as the Redis adapter does while Redis is down. */
  setAvailable(isAvailable: boolean): void
  /** While false events are not delivered (a lost pub/sub message). */
  setPublishing(isPublishing: boolean): void
}

export function createFakeApiKeyStore(options: { now?: () => number } = {}): FakeApiKeyStore {
  const now = options.now ?? Date.now
  const byFn = new Map<string, Map<string, ApiKeyRecord>>()
  const listeners = new Set<ApiKeyEventListener>()
  let isAvailable = true
  let isPublishing = true
  const check = async () => {
    if (!isAvailable) throw new Error('fake key store unavailable')
  }
  const publish = (fn: string) => {
    if (!isPublishing) return
    setImmediate(() => {
      for (const l of listeners) l.onEvent(fn)
    })
  }
  return {
    async create(fn, opts = {}) {
      await check()
      const keys = byFn.get(fn) ?? new Map<string, ApiKeyRecord>()
      if (keys.size >= MAX_KEYS_PER_FUNCTION) throw tooManyKeys(fn)
      const { key, record } = newApiKey(fn, now(), opts.name)
      keys.set(record.id, record)
      byFn.set(fn, keys)
      publish(fn)
      return { key, record }
    },
    async list(fn) {
      await check()
      return sortKeys([...(byFn.get(fn)?.values() ?? [])])
    },
    async functions() {
      await check()
      return [...byFn.keys()].sort()
    },
    async revoke(fn, id) {
      await check()
      const keys = byFn.get(fn)
      if (!keys?.delete(id)) return false
      if (!keys.size) byFn.delete(fn)
      publish(fn)
      return true
    },
    async revokeAll(fn) {
      await check()
      const n = byFn.get(fn)?.size ?? 0
      if (!n) return 0
      byFn.delete(fn)
      publish(fn)
      return n
    },
    async subscribe(listener) {
      await check()
      listeners.add(listener)
      return {
        close: () => {
          listeners.delete(listener)
          return Promise.resolve()
        },
      }
    },
    setAvailable(v) {
      isAvailable = v
    },
    setPublishing(v) {
      isPublishing = v
    },
  }
}
