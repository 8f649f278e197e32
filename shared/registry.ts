/**
 * The instance registry: which instances of which function exist, in what state and where they
 * answer. The port is used by the gateway (reserve, list, touch) and the executor (markReady,
 * markDraining, remove, beat). The Redis adapter below takes a client made by shared/redis.ts.
 *
 * Every change to an instance is PUBLISHed on EVENTS_CHANNEL in the same Lua script that makes it,
 * so a subscriber never sees an event before the change is readable.
 */
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import {
  EVENTS_CHANNEL,
  EXECUTOR_FRESH_MS,
  INSTANCE_STATES,
  KEY_PREFIX,
  keys,
  type ColdStartPhases,
  type ExecutorHeartbeat,
  type InstanceAddress,
  type InstanceRecord,
  type RegistryEvent,
  type RuntimeKind,
  type ScalingEstimates,
} from './contracts.ts'
import { subscribeChannel } from './redis.ts'
import {
  CLAIM_STANDBY,
  MARK_FROZEN,
  RESERVE_STANDBY,
  standbyReservation,
  type StandbyRegistry,
} from './registry-standby.ts'
import { subnetRange } from './subnet.ts'

export interface RegistryListener {
  onEvent(event: RegistryEvent): void
  /** The subscription was re-established after a disconnect: events may have been missed. */
  onResync?(): void
}

export interface RegistrySubscription {
  close(): Promise<void>
}

export interface InstanceRegistry extends StandbyRegistry {
  /**
   * Atomically create a `starting` record for `instanceId` if `fn` has fewer than `maxInstances`
   * records that are not draining. False when the function is full or the id is taken.
   */
  reserve(fn: string, maxInstances: number, instanceId: string, hostId?: string): Promise<boolean>
  /** False when the reservation no longer exists (withdrawn or removed): the caller must stop the instance. */
  markReady(
    fn: string,
    id: string,
    address: InstanceAddress,
    runtime: RuntimeKind,
    phases: ColdStartPhases,
    hostId: string,
    /** The function version the instance runs (function registry), when it has one. */
    version?: string,
  ): Promise<boolean>
  markDraining(fn: string, id: string): Promise<boolean>
  /**
   * Add `delta` to the requests in flight on an instance, summed over gateways. Gateways count
   * only instances they no longer route to (draining, or of a version no longer active), so that
   * the executor stops them once their last request is done. No effect once the record is gone.
   */
  addInflight(fn: string, id: string, delta: number): Promise<void>
  /** The summed in-flight count of a draining instance (0 when none was reported). */
  inflight(fn: string, id: string): Promise<number>
  /**
   * Drop every key a deleted function left (instance hashes, learnt times, re-bake flag), if it
   * has no instance record left. False while it still has some.
   */
  forget(fn: string): Promise<boolean>
  /** Remove a record only while it is still `starting` (a restore that will not happen). */
  withdraw(fn: string, id: string): Promise<boolean>
  remove(fn: string, id: string): Promise<boolean>
  get(fn: string, id: string): Promise<InstanceRecord | undefined>
  list(fn: string): Promise<InstanceRecord[]>
  listAll(): Promise<InstanceRecord[]>
  /** Functions that have (or had) instances. */
  functions(): Promise<string[]>
  /** Record the last time a request was routed to an instance (epoch ms). No event. */
  touch(fn: string, id: string, atMs: number): Promise<void>
  lastUse(fn: string): Promise<Map<string, number>>
  /**
   * Record an executor's heartbeat, unless its subnet overlaps the subnet of another host whose
   * heartbeat is fresh (EXECUTOR_FRESH_MS) and which is not on the same network (same bridge):
   * that host's heartbeat is returned and nothing is written. Atomic: of two executors claiming
   * one subnet at once, one gets it.
   */
  beat(heartbeat: ExecutorHeartbeat): Promise<ExecutorHeartbeat | undefined>
  executors(): Promise<ExecutorHeartbeat[]>
  /** Publish a function-level event (scale-to-zero) for executors to act on. */
  publish(event: RegistryEvent): Promise<void>
  /** Flag `fn` for a re-bake and publish the `rebake` event. */
  requestRebake(fn: string): Promise<void>
  /** The scale-up rule's learnt times for `fn` (undefined: none recorded, or unreadable). */
  scalingEstimates(fn: string): Promise<ScalingEstimates | undefined>
  saveScalingEstimates(fn: string, estimates: ScalingEstimates): Promise<void>
  subscribe(listener: RegistryListener): Promise<RegistrySubscription>
}

/** A JSON object's fields; undefined for anything else (invalid JSON, arrays count as objects). */
function jsonObject(text: string | null | undefined): Record<string, unknown> | undefined {
  if (!text) return undefined
  try {
    const v: unknown = JSON.parse(text)
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

/** Parse stored ScalingEstimates; undefined unless `at` and at least one time are valid. */
export function parseScalingEstimates(json: string | null | undefined): ScalingEstimates | undefined {
  const e = jsonObject(json)
  if (!e) return undefined
  const time = (x: unknown) => (typeof x === 'number' && Number.isFinite(x) && x > 0 ? x : undefined)
  const restoreMs = time(e.restoreMs)
  const serviceMs = time(e.serviceMs)
  const at = time(e.at)
  if (at === undefined || (restoreMs === undefined && serviceMs === undefined)) return undefined
  return {
    at,
    ...(restoreMs === undefined ? {} : { restoreMs }),
    ...(serviceMs === undefined ? {} : { serviceMs }),
  }
}

/** Does `r` describe the ready (or frozen, restored) instance the event `e` is about? */
function isReadyRecord(r: unknown, e: Record<string, unknown>): r is InstanceRecord {
  if (typeof r !== 'object' || r === null || (e.state !== 'ready' && e.state !== 'frozen')) return false
  const rec = r as Record<string, unknown>
  const address = rec.address as Record<string, unknown> | undefined
  return (
    rec.id === e.id &&
    rec.fn === e.fn &&
    rec.state === e.state &&
    typeof address?.host === 'string' &&
    typeof address.port === 'number'
  )
}

/** Parse a message from EVENTS_CHANNEL; undefined for anything that is not a RegistryEvent. */
export function parseRegistryEvent(message: string): RegistryEvent | undefined {
  const e = jsonObject(message)
  if (typeof e?.fn !== 'string') return undefined
  if (e.type === 'instance' && typeof e.id === 'string') {
    const states: readonly unknown[] = [...INSTANCE_STATES, 'gone']
    if (!states.includes(e.state)) return undefined
    // A record that does not describe this ready instance is dropped: readers fall back to a read.
    const { record, ...event } = e
    return (isReadyRecord(record, event) ? { ...event, record } : event) as unknown as RegistryEvent
  }
  if (e.type === 'function' && (e.action === 'scale-to-zero' || e.action === 'rebake')) {
    return e as unknown as RegistryEvent
  }
  return undefined
}

// KEYS[1] instances hash, KEYS[2] functions set.
// ARGV: id, maxInstances, record JSON, fn, channel, event JSON.
// Draining instances (an old version's, finishing their last requests) take no new requests and
// are on their way out: they do not count, so a new version can start while they drain.
const RESERVE = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local n = 0
for _, json in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, r = pcall(cjson.decode, json)
  if not (ok and type(r) == 'table' and r.state == 'draining') then n = n + 1 end
end
if n >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1`

// KEYS[1] instances hash. ARGV: id, address JSON, runtime, phases JSON, hostId, readyAt, channel, fn.
// Only a starting or ready record may become ready: a withdrawn or draining one may not come back,
// and a standby one becomes ready only when a gateway claims it (CLAIM_STANDBY).
// The event carries the record.
const MARK_READY = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local r = cjson.decode(cur)
if r.state == 'draining' or r.state == 'frozen' then return 0 end
r.state = 'ready'
r.address = cjson.decode(ARGV[2])
r.runtime = ARGV[3]
r.phases = cjson.decode(ARGV[4])
r.hostId = ARGV[5]
r.readyAt = tonumber(ARGV[6])
if ARGV[9] ~= '' then r.version = ARGV[9] end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
redis.call('PUBLISH', ARGV[7], cjson.encode({type = 'instance', fn = ARGV[8], id = ARGV[1], state = 'ready', record = r}))
return 1`

// KEYS[1] instances hash. ARGV: id, channel, event.
const MARK_DRAINING = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local r = cjson.decode(cur)
r.state = 'draining'
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1`

// KEYS[1] instances, KEYS[2] lastuse, KEYS[3] inflight. ARGV: id, channel, event, onlyStarting ('1'|'0').
const REMOVE = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
if ARGV[4] == '1' and cjson.decode(cur).state ~= 'starting' then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1`

// KEYS[1] instances, KEYS[2] inflight. ARGV: id, delta. Never resurrects a removed instance; a
// count that reaches 0 is deleted.
const ADD_INFLIGHT = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[2])
if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
return 1`

// KEYS: instances, lastuse, inflight, functions set, scaling hash, rebake flag. ARGV: fn.
const FORGET = `
if redis.call('HLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[6])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return 1`

// KEYS[1] instances, KEYS[2] lastuse. ARGV: id, atMs. A touch never resurrects a removed instance.
const TOUCH = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1`

// KEYS[1] executors hash. ARGV: hostId, heartbeat JSON, subnet's first and last address (or
// '' when it has none), now, freshMs, network ('' when unknown). A fresh heartbeat of another
// host whose subnet overlaps, and that is not on the same network, is returned instead of writing;
// unreadable entries never block.
const BEAT = `
local function range(cidr)
  if type(cidr) ~= 'string' then return nil end
  local a, b, c, d, bits = string.match(cidr, '^(%d+)%.(%d+)%.(%d+)%.(%d+)/(%d+)$')
  if not a then return nil end
  local ip = ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
  local size = 2 ^ (32 - tonumber(bits))
  local first = ip - (ip % size)
  return first, first + size - 1
end
if ARGV[3] ~= '' then
  local first, last = tonumber(ARGV[3]), tonumber(ARGV[4])
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if all[i] ~= ARGV[1] then
      local ok, h = pcall(cjson.decode, all[i + 1])
      if ok and type(h) == 'table' and type(h.at) == 'number' and tonumber(ARGV[5]) - h.at <= tonumber(ARGV[6])
        and not (ARGV[7] ~= '' and h.network == ARGV[7]) then
        local f, l = range(h.subnet)
        if f and f <= last and first <= l then return all[i + 1] end
      end
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return false`

export interface RedisRegistryDeps {
  readonly redis: Redis
  readonly logger: Logger
  /** Replaces KEY_PREFIX in every key and the channel: tests use a unique prefix each. */
  readonly prefix?: string
  readonly now?: () => number
}

/** The Redis-backed registry. The caller owns `redis`; subscriptions own a duplicate of it. */
export function createRedisRegistry(deps: RedisRegistryDeps): InstanceRegistry {
  const { redis } = deps
  const log = deps.logger.child({ module: 'registry' })
  const now = deps.now ?? Date.now
  const prefix = deps.prefix ?? KEY_PREFIX
  // The key layout lives in contracts.ts; swapping the leading prefix keeps it the single source.
  const k = (key: string) => (prefix === KEY_PREFIX ? key : prefix + key.slice(KEY_PREFIX.length))
  const channel = k(EVENTS_CHANNEL)
  const instanceEvent = (fn: string, id: string, state: InstanceRecord['state'] | 'gone') =>
    JSON.stringify({ type: 'instance', fn, id, state } satisfies RegistryEvent)
  const run = async (script: string, keyList: string[], args: (string | number)[]) =>
    Number(await redis.eval(script, keyList.length, ...keyList, ...args)) === 1

  const parseRecords = (fn: string, hash: Record<string, string>): InstanceRecord[] =>
    Object.entries(hash).flatMap(([id, json]) => {
      try {
        return [JSON.parse(json) as InstanceRecord]
      } catch {
        log.warn({ fn, id }, 'unreadable instance record')
        return []
      }
    })

  const removeWith = (fn: string, id: string, onlyStarting: boolean) =>
    run(
      REMOVE,
      [k(keys.instances(fn)), k(keys.lastUse(fn)), k(keys.inflight(fn))],
      [id, channel, instanceEvent(fn, id, 'gone'), onlyStarting ? '1' : '0'],
    )

  return {
    reserve(fn, maxInstances, instanceId, hostId = '') {
      const record: InstanceRecord = { id: instanceId, fn, state: 'starting', hostId, createdAt: now() }
      return run(
        RESERVE,
        [k(keys.instances(fn)), k(keys.functions())],
        [
          instanceId,
          maxInstances,
          JSON.stringify(record),
          fn,
          channel,
          instanceEvent(fn, instanceId, 'starting'),
        ],
      )
    },
    markReady(fn, id, address, runtime, phases, hostId, version = '') {
      return run(
        MARK_READY,
        [k(keys.instances(fn))],
        [
          id,
          JSON.stringify({ host: address.host, port: address.port }),
          runtime,
          JSON.stringify(phases),
          hostId,
          now(),
          channel,
          fn,
          version,
        ],
      )
    },
    async addInflight(fn, id, delta) {
      await run(ADD_INFLIGHT, [k(keys.instances(fn)), k(keys.inflight(fn))], [id, Math.round(delta)])
    },
    async inflight(fn, id) {
      return Math.max(0, Number((await redis.hget(k(keys.inflight(fn)), id)) ?? 0))
    },
    forget: (fn) =>
      run(
        FORGET,
        [
          k(keys.instances(fn)),
          k(keys.lastUse(fn)),
          k(keys.inflight(fn)),
          k(keys.functions()),
          k(keys.scaling()),
          k(keys.rebake(fn)),
        ],
        [fn],
      ),
    reserveStandby(fn, limits, instanceId, hostId) {
      const record = standbyReservation(fn, instanceId, hostId, now(), limits.version)
      return run(
        RESERVE_STANDBY,
        [k(keys.instances(fn)), k(keys.functions())],
        [
          instanceId,
          limits.standby,
          limits.maxInstances,
          JSON.stringify(record),
          fn,
          channel,
          instanceEvent(fn, instanceId, 'frozen'),
          limits.version ?? '',
        ],
      )
    },
    markFrozen(fn, id, info) {
      const { address, runtime, phases, hostId, memoryBytes } = info
      const json = JSON.stringify({ address, runtime, phases, hostId, memoryBytes })
      return run(MARK_FROZEN, [k(keys.instances(fn))], [id, json, now(), channel, fn])
    },
    async claimStandby(fn, id, version) {
      const json = (await redis.eval(
        CLAIM_STANDBY,
        1,
        k(keys.instances(fn)),
        id,
        now(),
        channel,
        fn,
        version ?? '',
      )) as string | null
      return json ? parseRecords(fn, { [id]: json })[0] : undefined
    },
    markDraining: (fn, id) =>
      run(MARK_DRAINING, [k(keys.instances(fn))], [id, channel, instanceEvent(fn, id, 'draining')]),
    withdraw: (fn, id) => removeWith(fn, id, true),
    remove: (fn, id) => removeWith(fn, id, false),
    async get(fn, id) {
      const json = await redis.hget(k(keys.instances(fn)), id)
      return json === null ? undefined : parseRecords(fn, { [id]: json })[0]
    },
    async list(fn) {
      return parseRecords(fn, await redis.hgetall(k(keys.instances(fn))))
    },
    async listAll() {
      const fns = (await redis.smembers(k(keys.functions()))).sort()
      if (!fns.length) return []
      const pipeline = redis.pipeline()
      for (const fn of fns) pipeline.hgetall(k(keys.instances(fn)))
      const results = (await pipeline.exec()) ?? []
      return results.flatMap(([err, hash], i) => {
        if (err) throw err
        return parseRecords(fns[i] ?? '', hash as Record<string, string>)
      })
    },
    async functions() {
      return (await redis.smembers(k(keys.functions()))).sort()
    },
    async touch(fn, id, atMs) {
      await run(TOUCH, [k(keys.instances(fn)), k(keys.lastUse(fn))], [id, Math.round(atMs)])
    },
    async lastUse(fn) {
      const hash = await redis.hgetall(k(keys.lastUse(fn)))
      return new Map(Object.entries(hash).map(([id, at]) => [id, Number(at)]))
    },
    async beat(heartbeat) {
      const range = heartbeat.subnet === undefined ? undefined : subnetRange(heartbeat.subnet)
      const other = (await redis.eval(
        BEAT,
        1,
        k(keys.executors()),
        heartbeat.hostId,
        JSON.stringify(heartbeat),
        range?.first ?? '',
        range?.last ?? '',
        now(),
        EXECUTOR_FRESH_MS,
        heartbeat.network ?? '',
      )) as string | null
      return other === null ? undefined : (jsonObject(other) as ExecutorHeartbeat | undefined)
    },
    async executors() {
      const hash = await redis.hgetall(k(keys.executors()))
      return Object.values(hash).flatMap((json) => {
        try {
          return [JSON.parse(json) as ExecutorHeartbeat]
        } catch {
          return []
        }
      })
    },
    async scalingEstimates(fn) {
      return parseScalingEstimates(await redis.hget(k(keys.scaling()), fn))
    },
    async saveScalingEstimates(fn, estimates) {
      await redis.hset(k(keys.scaling()), fn, JSON.stringify(estimates))
    },
    async publish(event) {
      await redis.publish(channel, JSON.stringify(event))
    },
    async requestRebake(fn) {
      const event: RegistryEvent = { type: 'function', fn, action: 'rebake' }
      await redis
        .multi()
        .set(k(keys.rebake(fn)), String(now()))
        .publish(channel, JSON.stringify(event))
        .exec()
    },
    subscribe: (listener) =>
      subscribeChannel(redis, channel, {
        onMessage(message) {
          const event = parseRegistryEvent(message)
          if (event) listener.onEvent(event)
          else log.warn({ message: message.slice(0, 200) }, 'ignored malformed registry event')
        },
        ...(listener.onResync ? { onResync: () => listener.onResync?.() } : {}),
        onError: (err) => log.debug({ err: err.message }, 'subscriber connection error'),
      }),
  }
}
