/**
 * Prometheus metrics of asynchronous invocations, on the gateway's registry. Queue gauges are read
 * from Redis when scraped (they hold for all gateways); counters are this gateway's.
 */
import { Counter, Gauge, type Registry } from 'prom-client'
import type { AsyncQueueStats } from './bullmq-invocations.ts'

export interface AsyncMetrics {
  accepted(fn: string, isDuplicate: boolean): void
  attempt(fn: string, next: 'retry' | 'succeeded' | 'failed' | 'dead'): void
  callbackFailed(fn: string): void
}

export function createAsyncMetrics(deps: {
  readonly registry: Registry
  /** Every function's queue, read at scrape time. */
  readonly stats: () => Promise<readonly AsyncQueueStats[]>
  readonly now?: () => number
}): AsyncMetrics {
  const now = deps.now ?? Date.now
  const registers = [deps.registry]
  const accepted = new Counter({
    name: 'initless_async_accepted_total',
    help: 'Asynchronous invocations answered 202 by this gateway (duplicate: a repeated Idempotency-Key)',
    labelNames: ['function', 'duplicate'] as const,
    registers,
  })
  const attempts = new Counter({
    name: 'initless_async_attempts_total',
    help: 'Attempts this gateway ran, by what followed (retry, succeeded, failed, dead)',
    labelNames: ['function', 'outcome'] as const,
    registers,
  })
  const outcomes = new Counter({
    name: 'initless_async_outcomes_total',
    help: 'Invocations this gateway finished, by final state (succeeded, failed, dead)',
    labelNames: ['function', 'state'] as const,
    registers,
  })
  const callbackFailures = new Counter({
    name: 'initless_async_callback_failures_total',
    help: 'Callbacks given up after their last retry',
    labelNames: ['function'] as const,
    registers,
  })
  // One Redis read per scrape serves all three gauges.
  let pending: Promise<readonly AsyncQueueStats[]> | undefined
  const read = () => {
    pending ??= deps.stats().finally(() => setTimeout(() => (pending = undefined), 0))
    return pending
  }
  const gauge = (name: string, help: string, value: (s: AsyncQueueStats) => number | undefined) =>
    new Gauge({
      name,
      help,
      labelNames: ['function'] as const,
      registers,
      async collect() {
        this.reset()
        for (const s of await read().catch(() => [])) {
          const v = value(s)
          if (v !== undefined) this.set({ function: s.fn }, v)
        }
      },
    })
  gauge(
    'initless_async_queue_depth',
    'Invocations queued (waiting for their first attempt or a retry)',
    (s) => s.queued,
  )
  gauge('initless_async_running', 'Invocations running now, on any gateway', (s) => s.running)
  gauge('initless_async_dead', 'Dead invocations kept (the dead-letter size)', (s) => s.dead)
  gauge('initless_async_oldest_queued_seconds', 'Age of the oldest invocation waiting to run', (s) =>
    s.oldestQueuedAt === undefined ? 0 : Math.max(0, now() - s.oldestQueuedAt) / 1000,
  )
  return {
    accepted: (fn, isDuplicate) => accepted.inc({ function: fn, duplicate: String(isDuplicate) }),
    attempt(fn, next) {
      attempts.inc({ function: fn, outcome: next })
      if (next !== 'retry') outcomes.inc({ function: fn, state: next })
    },
    callbackFailed: (fn) => callbackFailures.inc({ function: fn }),
  }
}
