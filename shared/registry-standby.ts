/**
 * The registry's standby operations (scaling.standby): reserving a standby instance, recording it
 * frozen, and a gateway's claim. Each is one Lua script that changes the record and PUBLISHes the
 * event together, like the rest of the registry (registry.ts).
 */
import type { InstanceAddress, InstanceRecord, RuntimeKind, ColdStartPhases } from './contracts.ts'

export interface FrozenInfo {
  readonly address: InstanceAddress
  readonly runtime: RuntimeKind
  readonly phases: ColdStartPhases
  readonly hostId: string
  readonly version?: string
  /** The cgroup's memory when it was frozen (bytes). */
  readonly memoryBytes: number
}

export interface StandbyRegistry {
  /**
   * Atomically create a standby reservation (state `frozen` without an address) for `instanceId`
   * if `fn` has fewer than `standby` frozen records of `version` and fewer than `maxInstances`
   * records that are not draining. False when either is full or the id is taken.
   */
  reserveStandby(
    fn: string,
    limits: { readonly standby: number; readonly maxInstances: number; readonly version?: string },
    instanceId: string,
    hostId: string,
  ): Promise<boolean>
  /** The standby reservation was restored and frozen. False when its record is gone or claimed. */
  markFrozen(fn: string, id: string, info: FrozenInfo): Promise<boolean>
  /**
   * Claim a frozen instance for requests: frozen -> ready, atomically, so one claimer wins. Only an
   * instance with an address and, when `version` is given, of that version. The `ready` event it
   * publishes is the executor's signal to thaw it. Returns the record; undefined when taken or gone.
   */
  claimStandby(fn: string, id: string, version?: string): Promise<InstanceRecord | undefined>
}

/** A new standby reservation: frozen, no address until it is restored and frozen (markFrozen). */
export function standbyReservation(
  fn: string,
  id: string,
  hostId: string,
  createdAt: number,
  version?: string,
): InstanceRecord {
  return { id, fn, state: 'frozen', hostId, createdAt, ...(version === undefined ? {} : { version }) }
}

/** Is `r` a standby instance a gateway may claim (frozen, restored, of `version` when given)? */
export function isClaimable(r: InstanceRecord, version?: string): boolean {
  return r.state === 'frozen' && r.address !== undefined && (version === undefined || r.version === version)
}

// KEYS[1] instances hash, KEYS[2] functions set.
// ARGV: id, standby, maxInstances, record JSON, fn, channel, event JSON, version ('' for any).
export const RESERVE_STANDBY = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local n, frozen = 0, 0
for _, json in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, r = pcall(cjson.decode, json)
  if not (ok and type(r) == 'table' and r.state == 'draining') then n = n + 1 end
  if ok and type(r) == 'table' and r.state == 'frozen' and (ARGV[8] == '' or r.version == ARGV[8]) then
    frozen = frozen + 1
  end
end
if n >= tonumber(ARGV[3]) or frozen >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1`

// KEYS[1] instances hash. ARGV: id, info JSON (address, runtime, phases, hostId, memoryBytes),
// frozenAt, channel, fn. Only a standby reservation (frozen, no address yet) becomes frozen.
export const MARK_FROZEN = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local r = cjson.decode(cur)
if r.state ~= 'frozen' or r.address then return 0 end
local info = cjson.decode(ARGV[2])
r.address = info.address
r.runtime = info.runtime
r.phases = info.phases
r.hostId = info.hostId
r.memoryBytes = info.memoryBytes
r.frozenAt = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
redis.call('PUBLISH', ARGV[4], cjson.encode({type = 'instance', fn = ARGV[5], id = ARGV[1], state = 'frozen', record = r}))
return 1`

// KEYS[1] instances hash. ARGV: id, now, channel, fn, version ('' for any). Returns the record.
export const CLAIM_STANDBY = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return false end
local r = cjson.decode(cur)
if r.state ~= 'frozen' or not r.address then return false end
if ARGV[5] ~= '' and r.version ~= ARGV[5] then return false end
r.state = 'ready'
r.readyAt = tonumber(ARGV[2])
r.thawedAt = tonumber(ARGV[2])
local json = cjson.encode(r)
redis.call('HSET', KEYS[1], ARGV[1], json)
redis.call('PUBLISH', ARGV[3], cjson.encode({type = 'instance', fn = ARGV[4], id = ARGV[1], state = 'ready', record = r}))
return json`
