/**
 * In-memory RateLimiter for unit tests: the same GCRA as the Redis script (test/rate-limit.test.ts
 * runs the same cases against Redis), on an injected clock.
 */
import { intervalUs, type Bucket, type RateLimiter } from './rate-limiter.ts'

export interface FakeRateLimiter extends RateLimiter {
  /** Calls so far, with their function and client. */
  readonly calls: { readonly fn: string; readonly client: string }[]
  /** While false every call rejects, as the Redis adapter does while Redis is down. */
  setAvailable(isAvailable: boolean): void
}

export function createFakeRateLimiter(options: { nowMs?: () => number } = {}): FakeRateLimiter {
  const nowUs = () => Math.round((options.nowMs ?? Date.now)() * 1000)
  const tats = new Map<string, number>()
  const calls: { fn: string; client: string }[] = []
  let isAvailable = true
  return {
    calls,
    async take(fn, client, limits) {
      calls.push({ fn, client })
      if (!isAvailable) throw new Error('fake rate limiter unavailable')
      const now = nowUs()
      const buckets: [string, Bucket | undefined][] = [
        [fn, limits.perFunction],
        [`${fn}\0${client}`, limits.perClient],
      ]
      let wait = 0
      const next: [string, number][] = []
      for (const [key, bucket] of buckets) {
        if (!bucket) continue
        const interval = intervalUs(bucket.rate)
        const tat = Math.max(tats.get(key) ?? 0, now)
        const allowAt = tat + interval - bucket.burst * interval
        if (allowAt > now) wait = Math.max(wait, allowAt - now)
        else next.push([key, tat + interval])
      }
      if (wait > 0) return { isAllowed: false, retryAfterMs: wait / 1000 }
      for (const [key, tat] of next) tats.set(key, tat)
      return { isAllowed: true, retryAfterMs: 0 }
    },
    setAvailable(v) {
      isAvailable = v
    },
  }
}
