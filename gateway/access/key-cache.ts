/**
 * The gateway's in-process copy of the invocation keys, so that checking a key costs no Redis
 * call. It follows the store as the function watcher follows the function registry: an event
 * re-reads its function's keys (one HGETALL; a revocation reaches every gateway within
 * milliseconds), a periodic full re-read and one after every reconnect repair missed events.
 */
import { timingSafeEqual } from 'node:crypto'
import type { Logger } from 'pino'
import { apiKeyId, hashApiKey, type ApiKeyStore } from '../../shared/api-keys.ts'
import { createCoalescedReads } from '../../shared/coalesced-reads.ts'
import { errorMessage } from '../../shared/errors.ts'
import type { ChannelSubscription } from '../../shared/redis.ts'

export interface KeyCache {
  /** Subscribe, then read every function's keys; resolves once the first read is done. */
  start(): Promise<void>
  /** The id of `presented` when it is a current key of `fn`; undefined otherwise. */
  verify(fn: string, presented: string): string | undefined
  /** Re-read one function's keys now; resolves once a read that started after this call is applied. */
  refreshOne(fn: string): Promise<void>
  /** Re-read every function's keys now. */
  refresh(): Promise<void>
  close(): Promise<void>
}

/** Compared against when the id is unknown, so that both outcomes do the same work. */
const NO_HASH = Buffer.alloc(32)

export function createKeyCache(deps: {
  readonly store: Pick<ApiKeyStore, 'list' | 'functions' | 'subscribe'>
  readonly logger: Logger
  /** Full re-read interval, in ms. */
  readonly refreshIntervalMs: number
}): KeyCache {
  const log = deps.logger.child({ module: 'key-cache' })
  /** fn -> key id -> SHA-256 of the key. */
  const hashes = new Map<string, Map<string, Buffer>>()
  /** Bumped per function whenever one of its reads is applied; a full read that raced it is dropped. */
  const generations = new Map<string, number>()
  let subscription: ChannelSubscription | undefined
  let timer: NodeJS.Timeout | undefined
  let isClosed = false

  const apply = (fn: string, records: readonly { id: string; hash: string }[]) => {
    generations.set(fn, (generations.get(fn) ?? 0) + 1)
    if (!records.length) return void hashes.delete(fn)
    hashes.set(fn, new Map(records.map((r) => [r.id, Buffer.from(r.hash, 'hex')])))
  }

  const reads = createCoalescedReads(
    async (fn) => {
      const records = await deps.store.list(fn)
      if (!isClosed) apply(fn, records)
    },
    (fn, err) => log.warn({ fn, err: errorMessage(err) }, 'key read failed'),
  )

  const refresh = async () => {
    const started = new Map(generations)
    const fns = await deps.store.functions()
    const lists = await Promise.all(fns.map(async (fn) => [fn, await deps.store.list(fn)] as const))
    if (isClosed) return
    const isUntouched = (fn: string) =>
      (generations.get(fn) ?? 0) === (started.get(fn) ?? 0) && !reads.isReading(fn)
    for (const [fn, records] of lists) if (isUntouched(fn)) apply(fn, records)
    const seen = new Set(fns)
    for (const fn of [...hashes.keys()]) if (!seen.has(fn) && isUntouched(fn)) apply(fn, [])
  }
  const refreshLogged = () =>
    void refresh().catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'key re-read failed'))

  return {
    async start() {
      subscription = await deps.store.subscribe({
        onEvent: (fn) => void reads.read(fn),
        onResync: refreshLogged,
      })
      await refresh()
      timer = setInterval(refreshLogged, deps.refreshIntervalMs)
      timer.unref()
    },
    verify(fn, presented) {
      const id = apiKeyId(presented)
      if (id === undefined) return undefined
      const expected = hashes.get(fn)?.get(id)
      // Hashes of equal length compared in constant time: nothing about the secret leaks by timing.
      const isMatch = timingSafeEqual(hashApiKey(presented), expected ?? NO_HASH)
      return isMatch && expected ? id : undefined
    },
    refreshOne: reads.read,
    refresh,
    async close() {
      isClosed = true
      clearInterval(timer)
      await subscription?.close()
    },
  }
}
