/**
 * The function registry: which functions are deployed, their versions and which one is active.
 * It is the source of truth for running gateways and executors (nothing reads `functions/` at run
 * time except to deploy from it). The gateway writes new versions and activations (admin API), the
 * executor that runs a deploy job records images and snapshots; everyone follows it live through
 * shared/function-watcher.ts (events plus a periodic re-read).
 *
 * Layout (contracts.ts `keys`): a HASH per function (`active`, `activatedAt`, `v:<version>` -> JSON
 * FunctionVersion, `b:<version>:<host>` -> JSON bake of one host, merged into `bakedOn` when read:
 * hosts record their bakes concurrently without rewriting the version), a SET of names, a STRING per version holding its build context (tar). Every
 * change is PUBLISHed on FUNCTION_EVENTS_CHANNEL by the same Lua script or MULTI that makes it, so
 * a subscriber never sees an event before the change is readable.
 */
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { FUNCTION_EVENTS_CHANNEL, KEY_PREFIX, keys } from './contracts.ts'
import type { Manifest } from './manifest.ts'
import { subscribeChannel } from './redis.ts'
import type { RegistrySubscription } from './registry.ts'

export const VERSION_STATES = ['pending', 'ready', 'failed'] as const
export type VersionState = (typeof VERSION_STATES)[number]

/** The steps of a deploy, as a failure names them. */
export const DEPLOY_STEPS = ['upload', 'manifest', 'build', 'publish', 'bake', 'activate'] as const
export type DeployStep = (typeof DEPLOY_STEPS)[number]

export interface DeployFailure {
  readonly step: DeployStep
  /** A code of shared/errors.ts. */
  readonly code: string
  readonly message: string
  /** The function's last output lines (build log or the baked process's output), when any. */
  readonly output?: string
}

/** One version of a function: the content of its build context and manifest. */
export interface FunctionVersion {
  /** Content hash of the build context and the manifest's snapshot-relevant fields (versions.ts). */
  readonly version: string
  /** The manifest; its live fields (versions.ts LIVE_FIELDS) may change without a new version. */
  readonly manifest: Manifest
  readonly state: VersionState
  /** Epoch ms of the deploy that created it. */
  readonly createdAt: number
  /** Bytes of the uploaded build context. */
  readonly contextBytes: number
  /**
   * The function image, once built. `digest`: where it was pushed (INITLESS_IMAGE_REGISTRY), as a
   * pullable reference `<registry>/<repo>@sha256:...`; the other hosts pull exactly this.
   */
  readonly image?: { readonly tag: string; readonly id: string; readonly digest?: string }
  /** Hosts that baked it: host id -> snapshot key ('' for restore policy boot) and when. */
  readonly bakedOn: Readonly<Record<string, HostBake>>
  /** Why the deploy of this version failed (state `failed`). */
  readonly failure?: DeployFailure
}

/** One host's bake of a version: its snapshot key ('' for restore policy boot) and when. */
export interface HostBake {
  readonly at: number
  readonly snapshotKey: string
}

export interface FunctionRecord {
  readonly name: string
  /** The version requests go to; absent until one was activated. */
  readonly active?: string
  readonly activatedAt?: number
  /** Newest first. */
  readonly versions: readonly FunctionVersion[]
}

/** The active version's record, if there is one. */
export function activeVersion(r: FunctionRecord | undefined): FunctionVersion | undefined {
  return r?.active === undefined ? undefined : r.versions.find((v) => v.version === r.active)
}

export type FunctionEventAction = 'version' | 'activated' | 'versions-removed' | 'deleted'

/** Published on FUNCTION_EVENTS_CHANNEL: readers re-read the function (one HGETALL). */
export interface FunctionEvent {
  readonly type: 'function-registry'
  readonly fn: string
  readonly action: FunctionEventAction
  readonly version?: string
}

export interface FunctionEventListener {
  onEvent(event: FunctionEvent): void
  /** The subscription was re-established: events may have been missed. */
  onResync?(): void
}

export interface FunctionRegistry {
  get(name: string): Promise<FunctionRecord | undefined>
  list(): Promise<FunctionRecord[]>
  /** Create or replace one version's record (never the active pointer). */
  putVersion(name: string, version: FunctionVersion): Promise<void>
  /**
   * Point `active` at a version, atomically, if it exists and is `ready`; false otherwise. Requests
   * that arrive after the event go to that version.
   */
  activate(name: string, version: string): Promise<boolean>
  /**
   * Record that `host` baked `version` (its snapshot is on that host), without rewriting the
   * version: hosts bake concurrently. False when the version does not exist (any more).
   */
  markBaked(name: string, version: string, host: string, bake: HostBake): Promise<boolean>
  /** Drop versions and their build contexts; the active one is never dropped. */
  removeVersions(name: string, versions: readonly string[]): Promise<void>
  /** Delete the function: its versions, contexts and name. False when it did not exist. */
  remove(name: string): Promise<boolean>
  saveContext(name: string, version: string, tar: Buffer): Promise<void>
  context(name: string, version: string): Promise<Buffer | undefined>
  /**
   * Take the function's change lock for `ttlMs` (deploys and rollbacks of one function run one at
   * a time, across gateways; the TTL frees it when its holder died). Resolves undefined when taken,
   * or with the description of the holder that has it.
   */
  lock(name: string, holder: string, ttlMs: number): Promise<string | undefined>
  /** Release the lock if `holder` still has it (after its TTL someone else may). */
  unlock(name: string, holder: string): Promise<void>
  /** Who holds the function's change lock now (a deploy or rollback under way), if anyone. */
  changeHolder(name: string): Promise<string | undefined>
  subscribe(listener: FunctionEventListener): Promise<RegistrySubscription>
}

const ACTIONS: readonly string[] = ['version', 'activated', 'versions-removed', 'deleted']

/** Parse a message from FUNCTION_EVENTS_CHANNEL; undefined for anything else. */
export function parseFunctionEvent(message: string): FunctionEvent | undefined {
  let e: unknown
  try {
    e = JSON.parse(message)
  } catch {
    return undefined
  }
  if (typeof e !== 'object' || e === null) return undefined
  const o = e as Record<string, unknown>
  if (o.type !== 'function-registry' || typeof o.fn !== 'string' || !ACTIONS.includes(o.action as string))
    return undefined
  if (o.version !== undefined && typeof o.version !== 'string') return undefined
  return o as unknown as FunctionEvent
}

/** A function's HASH as stored, read back; versions that do not parse are left out. */
export function parseFunctionHash(
  name: string,
  hash: Record<string, string>,
  onBad?: (field: string) => void,
): FunctionRecord | undefined {
  const versions: FunctionVersion[] = []
  const bakes = new Map<string, Record<string, HostBake>>()
  for (const [field, json] of Object.entries(hash)) {
    if (!field.startsWith('b:')) continue
    const sep = field.indexOf(':', 2)
    try {
      const bake = JSON.parse(json) as HostBake
      if (sep < 0 || typeof bake.at !== 'number' || typeof bake.snapshotKey !== 'string') onBad?.(field)
      else {
        const version = field.slice(2, sep)
        bakes.set(version, { ...bakes.get(version), [field.slice(sep + 1)]: bake })
      }
    } catch {
      onBad?.(field)
    }
  }
  for (const [field, json] of Object.entries(hash)) {
    if (!field.startsWith('v:')) continue
    try {
      const v = JSON.parse(json) as FunctionVersion
      const baked = bakes.get(v.version)
      if (typeof v.version === 'string' && typeof v.manifest === 'object')
        versions.push(baked ? { ...v, bakedOn: { ...v.bakedOn, ...baked } } : v)
      else onBad?.(field)
    } catch {
      onBad?.(field)
    }
  }
  if (!versions.length && hash.active === undefined) return undefined
  versions.sort((a, b) => b.createdAt - a.createdAt || (a.version < b.version ? -1 : 1))
  const activatedAt = Number(hash.activatedAt)
  return {
    name,
    ...(hash.active ? { active: hash.active } : {}),
    ...(Number.isFinite(activatedAt) && hash.activatedAt ? { activatedAt } : {}),
    versions,
  }
}

// KEYS[1] function hash. ARGV: version, now, channel, event.
const ACTIVATE = `
local v = redis.call('HGET', KEYS[1], 'v:' .. ARGV[1])
if not v then return 0 end
if cjson.decode(v).state ~= 'ready' then return 0 end
redis.call('HSET', KEYS[1], 'active', ARGV[1], 'activatedAt', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1`

// KEYS[1] function hash. ARGV: version, host field, bake JSON, channel, event.
const MARK_BAKED = `
if redis.call('HEXISTS', KEYS[1], 'v:' .. ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1`

// KEYS[1] function hash, KEYS[2..n] the versions' context keys. ARGV: channel, event, versions...
const REMOVE_VERSIONS = `
local active = redis.call('HGET', KEYS[1], 'active')
local fields = redis.call('HKEYS', KEYS[1])
for i = 3, #ARGV do
  if ARGV[i] ~= active then
    redis.call('HDEL', KEYS[1], 'v:' .. ARGV[i])
    local bakes = 'b:' .. ARGV[i] .. ':'
    for _, field in ipairs(fields) do
      if string.sub(field, 1, #bakes) == bakes then redis.call('HDEL', KEYS[1], field) end
    end
    redis.call('DEL', KEYS[i - 1])
  end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1`

// KEYS[1] function hash, KEYS[2] names set. ARGV: name, context key prefix, channel, event.
const REMOVE = `
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'v:' then redis.call('DEL', ARGV[2] .. string.sub(field, 3)) end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1`

// KEYS[1] the lock. ARGV: holder, ttl ms. Returns nil when taken, else the current holder.
const LOCK = `
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return nil end
return redis.call('GET', KEYS[1])`

// KEYS[1] the lock. ARGV: holder.
const UNLOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`

export interface RedisFunctionRegistryDeps {
  readonly redis: Redis
  readonly logger: Logger
  /** Replaces KEY_PREFIX in every key and the channel (tests, isolated stacks). */
  readonly prefix?: string
  readonly now?: () => number
}

/** The Redis-backed function registry. The caller owns `redis`; subscriptions own a duplicate. */
export function createRedisFunctionRegistry(deps: RedisFunctionRegistryDeps): FunctionRegistry {
  const { redis } = deps
  const log = deps.logger.child({ module: 'function-registry' })
  const now = deps.now ?? Date.now
  const prefix = deps.prefix ?? KEY_PREFIX
  const k = (key: string) => (prefix === KEY_PREFIX ? key : prefix + key.slice(KEY_PREFIX.length))
  const channel = k(FUNCTION_EVENTS_CHANNEL)
  const event = (fn: string, action: FunctionEventAction, version?: string) =>
    JSON.stringify({
      type: 'function-registry',
      fn,
      action,
      ...(version === undefined ? {} : { version }),
    } satisfies FunctionEvent)
  const read = async (name: string) =>
    parseFunctionHash(name, await redis.hgetall(k(keys.deployment(name))), (field) =>
      log.warn({ fn: name, field }, 'unreadable function version'),
    )

  return {
    get: read,
    async list() {
      const names = (await redis.smembers(k(keys.deployed()))).sort()
      const records = await Promise.all(names.map(read))
      return records.filter((r): r is FunctionRecord => r !== undefined)
    },
    async putVersion(name, version) {
      await redis
        .multi()
        .hset(k(keys.deployment(name)), `v:${version.version}`, JSON.stringify(version))
        .sadd(k(keys.deployed()), name)
        .publish(channel, event(name, 'version', version.version))
        .exec()
    },
    async activate(name, version) {
      const ok = await redis.eval(
        ACTIVATE,
        1,
        k(keys.deployment(name)),
        version,
        now(),
        channel,
        event(name, 'activated', version),
      )
      return Number(ok) === 1
    },
    async markBaked(name, version, host, bake) {
      const ok = await redis.eval(
        MARK_BAKED,
        1,
        k(keys.deployment(name)),
        version,
        `b:${version}:${host}`,
        JSON.stringify({ at: bake.at, snapshotKey: bake.snapshotKey }),
        channel,
        event(name, 'version', version),
      )
      return Number(ok) === 1
    },
    async removeVersions(name, versions) {
      if (!versions.length) return
      await redis.eval(
        REMOVE_VERSIONS,
        1 + versions.length,
        k(keys.deployment(name)),
        ...versions.map((v) => k(keys.context(name, v))),
        channel,
        event(name, 'versions-removed'),
        ...versions,
      )
    },
    async remove(name) {
      const ok = await redis.eval(
        REMOVE,
        2,
        k(keys.deployment(name)),
        k(keys.deployed()),
        name,
        k(keys.context(name, '')),
        channel,
        event(name, 'deleted'),
      )
      return Number(ok) === 1
    },
    async saveContext(name, version, tar) {
      await redis.set(k(keys.context(name, version)), tar)
    },
    async context(name, version) {
      return (await redis.getBuffer(k(keys.context(name, version)))) ?? undefined
    },
    async lock(name, holder, ttlMs) {
      const current = await redis.eval(
        LOCK,
        1,
        k(keys.changeLock(name)),
        holder,
        Math.max(1, Math.ceil(ttlMs)),
      )
      // The holder may have released it between SET and GET: then nobody holds it, but it was not
      // taken either; the caller is told "busy" with an unknown holder and tries again later.
      return current === null ? undefined : typeof current === 'string' ? current : 'unknown'
    },
    async unlock(name, holder) {
      await redis.eval(UNLOCK, 1, k(keys.changeLock(name)), holder)
    },
    async changeHolder(name) {
      return (await redis.get(k(keys.changeLock(name)))) ?? undefined
    },
    subscribe: (listener) =>
      subscribeChannel(redis, channel, {
        onMessage(message) {
          const e = parseFunctionEvent(message)
          if (e) listener.onEvent(e)
          else log.warn({ message: message.slice(0, 200) }, 'ignored malformed function event')
        },
        ...(listener.onResync ? { onResync: () => listener.onResync?.() } : {}),
        onError: (err) => log.debug({ err: err.message }, 'subscriber connection error'),
      }),
  }
}
