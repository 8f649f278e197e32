/**
 * Rate limits (manifest `rateLimit`), exact across every gateway sharing one Redis: one GCRA
 * (generic cell rate algorithm, a token bucket kept as one timestamp per bucket) over the
 * function's bucket and the client's, in one Lua script, so one round trip decides both and a
 * request refused by one bucket takes nothing from the other. Redis's own clock (TIME) is the
 * only clock, so gateways on hosts whose clocks differ agree. Only functions that configure a
 * limit pay for the round trip (docs/security.md has the measured cost).
 */
import type { Redis } from 'ioredis'
import { KEY_PREFIX } from '../../shared/contracts.ts'

/** One bucket: `rate` requests per second on average, up to `burst` at once. */
export interface Bucket {
  readonly rate: number
  readonly burst: number
}

export interface RateDecision {
  readonly isAllowed: boolean
  /** When refused: how long until a request would be allowed, in ms. */
  readonly retryAfterMs: number
}

export interface RateLimiter {
  /** Take one request from the function's bucket and the client's (either may be absent). */
  take(
    fn: string,
    client: string,
    limits: { readonly perFunction?: Bucket; readonly perClient?: Bucket },
  ): Promise<RateDecision>
}

/**
 * KEYS[1] the function's bucket, KEYS[2] the client's. ARGV: the function's emission interval and
 * burst, the client's (interval 0: no limit). A bucket stores its theoretical arrival time (TAT) in
 * microseconds of Redis's clock; a request is allowed when TAT + interval - burst * interval <= now.
 * Returns 0 (allowed) or the microseconds until a request would be.
 */
export const GCRA_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local tats = {}
for i = 1, 2 do
  local interval = tonumber(ARGV[i * 2 - 1])
  if interval > 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    local allowAt = tat + interval - tonumber(ARGV[i * 2]) * interval
    if allowAt > now then
      if allowAt - now > wait then wait = allowAt - now end
    else
      tats[i] = tat + interval
    end
  end
end
if wait > 0 then return wait end
for i = 1, 2 do
  if tats[i] then
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
  end
end
return 0`

/** Microseconds between two requests at `rate` per second. */
export const intervalUs = (rate: number): number => Math.max(1, Math.round(1e6 / rate))

/** The Redis GCRA limiter. The caller owns `redis`. */
export function createRedisRateLimiter(deps: {
  readonly redis: Redis
  readonly prefix?: string
}): RateLimiter {
  const prefix = deps.prefix ?? KEY_PREFIX
  const redis = deps.redis as Redis & {
    initlessGcra(k1: string, k2: string, ...args: (string | number)[]): Promise<number>
  }
  // defineCommand sends EVALSHA and falls back to EVAL once after a Redis restart flushed scripts.
  redis.defineCommand('initlessGcra', { numberOfKeys: 2, lua: GCRA_SCRIPT })
  return {
    async take(fn, client, limits) {
      const f = limits.perFunction
      const c = limits.perClient
      const waitUs = await redis.initlessGcra(
        `${prefix}:ratelimit:${fn}`,
        `${prefix}:ratelimit:${fn}:client:${client}`,
        f ? intervalUs(f.rate) : 0,
        f?.burst ?? 0,
        c ? intervalUs(c.rate) : 0,
        c?.burst ?? 0,
      )
      const wait = Number(waitUs)
      return { isAllowed: wait <= 0, retryAfterMs: wait / 1000 }
    },
  }
}
