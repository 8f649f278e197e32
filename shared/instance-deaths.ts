/**
 * Why instances died: the executor that ends an instance (its process gone, or recycled for a
 * limit it hit) records the reason; a gateway whose request to that instance failed reads it to
 * answer ERR_INSTANCE_DIED with the reason, and /metrics reads the counts. The records live in
 * Redis (keys.death, keys.deaths) so that every gateway sees what any executor found.
 */
import type { Redis } from 'ioredis'
import { KEY_PREFIX, keys } from './contracts.ts'

/**
 * - `oom-killed`: the memory cgroup's OOM killer killed a process of the instance.
 * - `pids-limit`: a fork or thread creation failed at the pids limit (a fork bomb).
 * - `disk-full`: the writable layer has no space left.
 * - `request-timeout`: a request ran past timeouts.request (a spinning instance, recycled).
 * - `exited`: the process ended with none of the above seen.
 */
export const DEATH_REASONS = ['oom-killed', 'pids-limit', 'disk-full', 'request-timeout', 'exited'] as const
export type DeathReason = (typeof DEATH_REASONS)[number]

export interface InstanceDeath {
  readonly id: string
  readonly fn: string
  readonly reason: DeathReason
  /** What was seen, for people (`memory cgroup oom_kill 1`). */
  readonly detail: string
  /** Epoch ms. */
  readonly at: number
}

export interface DeathCount {
  readonly fn: string
  readonly reason: DeathReason
  readonly count: number
}

export interface InstanceDeaths {
  /** Record a death and count it; an instance already recorded keeps its first reason. */
  record(death: InstanceDeath): Promise<void>
  /** The recorded death of an instance, if any (kept DEATH_TTL_S). */
  get(id: string): Promise<InstanceDeath | undefined>
  counts(): Promise<DeathCount[]>
}

/** How long a death record is kept: long past any request that could ask for it. */
export const DEATH_TTL_S = 600

/**
 * How long a gateway waits for the reason of an instance that failed its request: the executor
 * finds a dead instance within one reap interval (1 s by default) of its death.
 */
export const DEATH_REPORT_WAIT_MS = 3000

function isReason(value: string): value is DeathReason {
  return (DEATH_REASONS as readonly string[]).includes(value)
}

/** The `<fn>\t<reason>` -> count hash as DeathCounts; unknown reasons are skipped. */
export function parseDeathCounts(hash: Record<string, string>): DeathCount[] {
  return Object.entries(hash).flatMap(([field, value]) => {
    const [fn, reason] = field.split('\t')
    const count = Number(value)
    return fn && reason && isReason(reason) && Number.isFinite(count) ? [{ fn, reason, count }] : []
  })
}

export function parseDeath(json: string | null): InstanceDeath | undefined {
  if (!json) return undefined
  try {
    const d = JSON.parse(json) as Partial<InstanceDeath>
    return typeof d.id === 'string' && typeof d.fn === 'string' && isReason(String(d.reason))
      ? (d as InstanceDeath)
      : undefined
  } catch {
    return undefined
  }
}

/** The Redis-backed records; `prefix` replaces KEY_PREFIX as in the instance registry. */
export function createRedisInstanceDeaths(deps: { redis: Redis; prefix?: string }): InstanceDeaths {
  const { redis } = deps
  const prefix = deps.prefix ?? KEY_PREFIX
  const k = (key: string) => (prefix === KEY_PREFIX ? key : prefix + key.slice(KEY_PREFIX.length))
  return {
    async record(death) {
      // The first record of an instance wins and is counted once (a gateway and the executor may
      // both report it).
      const isFirst = await redis.set(k(keys.death(death.id)), JSON.stringify(death), 'EX', DEATH_TTL_S, 'NX')
      if (isFirst) await redis.hincrby(k(keys.deaths()), `${death.fn}\t${death.reason}`, 1)
    },
    async get(id) {
      return parseDeath(await redis.get(k(keys.death(id))))
    },
    async counts() {
      return parseDeathCounts(await redis.hgetall(k(keys.deaths())))
    },
  }
}
