/**
 * A live, in-process copy of the function registry, as gateways and executors follow it: every
 * event re-reads its function (one HGETALL), a periodic full re-read and one after every reconnect
 * repair missed events (the instance registry's pattern, gateway/instance-pool.ts). Listeners hear
 * of each function whose record changed, with the record before and after.
 */
import type { Logger } from 'pino'
import { createCoalescedReads } from './coalesced-reads.ts'
import { errorMessage } from './errors.ts'
import {
  activeVersion,
  type FunctionRecord,
  type FunctionRegistry,
  type FunctionVersion,
} from './function-registry.ts'
import type { RegistrySubscription } from './registry.ts'

export interface FunctionChange {
  readonly fn: string
  readonly before: FunctionRecord | undefined
  readonly after: FunctionRecord | undefined
}

export interface FunctionWatcher {
  /** Subscribe, then read every function; resolves once the first read is done. */
  start(): Promise<void>
  get(name: string): FunctionRecord | undefined
  /** The active version of `name`, if it is deployed and has one. */
  active(name: string): FunctionVersion | undefined
  list(): readonly FunctionRecord[]
  /** Called after each change is applied. Returns an unsubscribe function. */
  onChange(listener: (change: FunctionChange) => void): () => void
  /** Re-read every function now. */
  refresh(): Promise<void>
  /** Re-read one function now (after a change made here: answer only once this process sees it). */
  refreshOne(name: string): Promise<void>
  close(): Promise<void>
}

export interface FunctionWatcherDeps {
  readonly registry: Pick<FunctionRegistry, 'get' | 'list' | 'subscribe'>
  readonly logger: Logger
  /** Full re-read interval, in ms. */
  readonly refreshIntervalMs: number
}

export function createFunctionWatcher(deps: FunctionWatcherDeps): FunctionWatcher {
  const log = deps.logger.child({ module: 'function-watcher' })
  const records = new Map<string, FunctionRecord>()
  const texts = new Map<string, string>()
  /** Bumped per function whenever one of its reads is applied; a full read that raced it is dropped. */
  const generations = new Map<string, number>()
  const listeners = new Set<(change: FunctionChange) => void>()
  let subscription: RegistrySubscription | undefined
  let timer: NodeJS.Timeout | undefined
  let isClosed = false

  const apply = (fn: string, after: FunctionRecord | undefined) => {
    const text = after === undefined ? undefined : JSON.stringify(after)
    if (text === texts.get(fn)) return
    const before = records.get(fn)
    if (after) {
      records.set(fn, after)
      texts.set(fn, text ?? '')
    } else {
      records.delete(fn)
      texts.delete(fn)
    }
    generations.set(fn, (generations.get(fn) ?? 0) + 1)
    log.info(
      {
        fn,
        active: after?.active ?? null,
        versions: after?.versions.length ?? 0,
        wasActive: before?.active ?? null,
      },
      after ? 'function record changed' : 'function removed',
    )
    for (const l of [...listeners]) {
      try {
        l({ fn, before, after })
      } catch (err) {
        log.error({ fn, err: errorMessage(err) }, 'function change listener failed')
      }
    }
  }

  /** Re-read one function (events that arrive meanwhile cause one more read after it). */
  const reads = createCoalescedReads(
    async (fn) => {
      const record = await deps.registry.get(fn)
      if (!isClosed) apply(fn, record)
    },
    (fn, err) => log.warn({ fn, err: errorMessage(err) }, 'function read failed'),
  )
  const readOne = reads.read

  const refresh = async () => {
    const started = new Map(generations)
    const all = await deps.registry.list()
    if (isClosed) return
    const seen = new Set<string>()
    for (const r of all) {
      seen.add(r.name)
      if ((generations.get(r.name) ?? 0) === (started.get(r.name) ?? 0) && !reads.isReading(r.name))
        apply(r.name, r)
    }
    for (const fn of [...records.keys()]) {
      if (!seen.has(fn) && (generations.get(fn) ?? 0) === (started.get(fn) ?? 0) && !reads.isReading(fn))
        apply(fn, undefined)
    }
  }
  const refreshLogged = () =>
    void refresh().catch((err: unknown) =>
      log.warn({ err: errorMessage(err) }, 'function registry re-read failed'),
    )

  return {
    async start() {
      subscription = await deps.registry.subscribe({
        onEvent: (e) => void readOne(e.fn),
        onResync: refreshLogged,
      })
      await refresh()
      timer = setInterval(refreshLogged, deps.refreshIntervalMs)
      timer.unref()
    },
    get: (name) => records.get(name),
    active: (name) => activeVersion(records.get(name)),
    list: () => [...records.values()].sort((a, b) => a.name.localeCompare(b.name)),
    onChange(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    refresh,
    refreshOne: readOne,
    async close() {
      isClosed = true
      clearInterval(timer)
      listeners.clear()
      await subscription?.close()
    },
  }
}
