/**
 * In-memory InstanceRegistry for unit tests. Same semantics as the Redis adapter (checked by the
 * shared cases in test/registry.test.ts), events delivered asynchronously like pub/sub.
 */
import {
  EXECUTOR_FRESH_MS,
  type ExecutorHeartbeat,
  type InstanceRecord,
  type RegistryEvent,
  type ScalingEstimates,
} from './contracts.ts'
import { parseScalingEstimates, type InstanceRegistry, type RegistryListener } from './registry.ts'
import { isClaimable, standbyReservation } from './registry-standby.ts'
import { subnetsOverlap } from './subnet.ts'

export interface FakeRegistry extends InstanceRegistry {
  /** While false every operation rejects, as the Redis adapter does while Redis is down. */
  setAvailable(isAvailable: boolean): void
  /** Every event published so far, in order. */
  readonly events: readonly RegistryEvent[]
  /** Number of listeners currently subscribed. */
  subscriberCount(): number
}

export function createFakeRegistry(options: { now?: () => number } = {}): FakeRegistry {
  const now = options.now ?? Date.now
  const instances = new Map<string, Map<string, InstanceRecord>>()
  const lastUse = new Map<string, Map<string, number>>()
  const inflight = new Map<string, Map<string, number>>()
  const fns = new Set<string>()
  const heartbeats = new Map<string, ExecutorHeartbeat>()
  const rebakes = new Set<string>()
  const estimates = new Map<string, string>()
  const listeners = new Set<RegistryListener>()
  const events: RegistryEvent[] = []
  let isAvailable = true

  const check = () => {
    if (!isAvailable) throw new Error('fake registry unavailable')
  }
  const hash = (fn: string) => {
    let h = instances.get(fn)
    if (!h) instances.set(fn, (h = new Map<string, InstanceRecord>()))
    return h
  }
  const publish = (event: RegistryEvent) => {
    events.push(event)
    // Pub/sub delivers after the command returns; copy the set so close() during delivery is safe.
    for (const l of [...listeners]) queueMicrotask(() => listeners.has(l) && l.onEvent(event))
  }
  const removeWith = (fn: string, id: string, onlyStarting: boolean) => {
    const cur = instances.get(fn)?.get(id)
    if (!cur || (onlyStarting && cur.state !== 'starting')) return false
    instances.get(fn)?.delete(id)
    lastUse.get(fn)?.delete(id)
    inflight.get(fn)?.delete(id)
    publish({ type: 'instance', fn, id, state: 'gone' })
    return true
  }

  return {
    get events() {
      return events
    },
    setAvailable(v) {
      isAvailable = v
    },
    subscriberCount: () => listeners.size,
    async reserve(fn, maxInstances, instanceId, hostId = '') {
      await Promise.resolve()
      check()
      const h = hash(fn)
      const counted = [...h.values()].filter((r) => r.state !== 'draining').length
      if (h.has(instanceId) || counted >= maxInstances) return false
      h.set(instanceId, { id: instanceId, fn, state: 'starting', hostId, createdAt: now() })
      fns.add(fn)
      publish({ type: 'instance', fn, id: instanceId, state: 'starting' })
      return true
    },
    async markReady(fn, id, address, runtime, phases, hostId, version) {
      await Promise.resolve()
      check()
      const cur = instances.get(fn)?.get(id)
      if (!cur || cur.state === 'draining' || cur.state === 'frozen') return false
      const record: InstanceRecord = {
        ...cur,
        state: 'ready',
        address: { host: address.host, port: address.port },
        runtime,
        phases: { ...phases },
        hostId,
        readyAt: now(),
        ...(version ? { version } : {}),
      }
      hash(fn).set(id, record)
      publish({ type: 'instance', fn, id, state: 'ready', record: structuredClone(record) })
      return true
    },
    async reserveStandby(fn, limits, instanceId, hostId) {
      await Promise.resolve()
      check()
      const h = hash(fn)
      const all = [...h.values()]
      const counted = all.filter((r) => r.state !== 'draining').length
      const frozen = all.filter(
        (r) => r.state === 'frozen' && (limits.version === undefined || r.version === limits.version),
      ).length
      if (h.has(instanceId) || counted >= limits.maxInstances || frozen >= limits.standby) return false
      h.set(instanceId, standbyReservation(fn, instanceId, hostId, now(), limits.version))
      fns.add(fn)
      publish({ type: 'instance', fn, id: instanceId, state: 'frozen' })
      return true
    },
    async markFrozen(fn, id, info) {
      await Promise.resolve()
      check()
      const cur = instances.get(fn)?.get(id)
      if (cur?.state !== 'frozen' || cur.address) return false
      const { address, runtime, phases, hostId, memoryBytes } = info
      const record: InstanceRecord = {
        ...cur,
        address: { ...address },
        runtime,
        phases: { ...phases },
        hostId,
        memoryBytes,
        frozenAt: now(),
      }
      hash(fn).set(id, record)
      publish({ type: 'instance', fn, id, state: 'frozen', record: structuredClone(record) })
      return true
    },
    async claimStandby(fn, id, version) {
      await Promise.resolve()
      check()
      const cur = instances.get(fn)?.get(id)
      if (!cur || !isClaimable(cur, version)) return undefined
      const record: InstanceRecord = { ...cur, state: 'ready', readyAt: now(), thawedAt: now() }
      hash(fn).set(id, record)
      publish({ type: 'instance', fn, id, state: 'ready', record: structuredClone(record) })
      return structuredClone(record)
    },
    async markDraining(fn, id) {
      await Promise.resolve()
      check()
      const cur = instances.get(fn)?.get(id)
      if (!cur) return false
      hash(fn).set(id, { ...cur, state: 'draining' })
      publish({ type: 'instance', fn, id, state: 'draining' })
      return true
    },
    async addInflight(fn, id, delta) {
      await Promise.resolve()
      check()
      if (!instances.get(fn)?.has(id)) return
      let h = inflight.get(fn)
      if (!h) inflight.set(fn, (h = new Map<string, number>()))
      const n = (h.get(id) ?? 0) + Math.round(delta)
      if (n > 0) h.set(id, n)
      else h.delete(id)
    },
    async inflight(fn, id) {
      await Promise.resolve()
      check()
      return inflight.get(fn)?.get(id) ?? 0
    },
    async forget(fn) {
      await Promise.resolve()
      check()
      if (instances.get(fn)?.size) return false
      instances.delete(fn)
      lastUse.delete(fn)
      inflight.delete(fn)
      fns.delete(fn)
      estimates.delete(fn)
      rebakes.delete(fn)
      return true
    },
    async withdraw(fn, id) {
      await Promise.resolve()
      check()
      return removeWith(fn, id, true)
    },
    async remove(fn, id) {
      await Promise.resolve()
      check()
      return removeWith(fn, id, false)
    },
    async get(fn, id) {
      await Promise.resolve()
      check()
      const r = instances.get(fn)?.get(id)
      return r && structuredClone(r)
    },
    async list(fn) {
      await Promise.resolve()
      check()
      return [...(instances.get(fn)?.values() ?? [])].map((r) => structuredClone(r))
    },
    async listAll() {
      await Promise.resolve()
      check()
      return [...fns]
        .sort()
        .flatMap((fn) => [...(instances.get(fn)?.values() ?? [])].map((r) => structuredClone(r)))
    },
    async functions() {
      await Promise.resolve()
      check()
      return [...fns].sort()
    },
    async touch(fn, id, atMs) {
      await Promise.resolve()
      check()
      if (!instances.get(fn)?.has(id)) return
      let h = lastUse.get(fn)
      if (!h) lastUse.set(fn, (h = new Map<string, number>()))
      h.set(id, Math.round(atMs))
    },
    async lastUse(fn) {
      await Promise.resolve()
      check()
      return new Map(lastUse.get(fn) ?? [])
    },
    async beat(heartbeat) {
      await Promise.resolve()
      check()
      const subnet = heartbeat.subnet
      const other =
        subnet === undefined
          ? undefined
          : [...heartbeats.values()].find(
              (h) =>
                h.hostId !== heartbeat.hostId &&
                now() - h.at <= EXECUTOR_FRESH_MS &&
                !(heartbeat.network !== undefined && h.network === heartbeat.network) &&
                h.subnet !== undefined &&
                subnetsOverlap(h.subnet, subnet),
            )
      if (other) return structuredClone(other)
      heartbeats.set(heartbeat.hostId, structuredClone(heartbeat))
      return undefined
    },
    async executors() {
      await Promise.resolve()
      check()
      return [...heartbeats.values()].map((h) => structuredClone(h))
    },
    async publish(event) {
      await Promise.resolve()
      check()
      publish(event)
    },
    async requestRebake(fn) {
      await Promise.resolve()
      check()
      rebakes.add(fn)
      publish({ type: 'function', fn, action: 'rebake' })
    },
    async scalingEstimates(fn) {
      await Promise.resolve()
      check()
      return parseScalingEstimates(estimates.get(fn))
    },
    async saveScalingEstimates(fn, e: ScalingEstimates) {
      await Promise.resolve()
      check()
      estimates.set(fn, JSON.stringify(e))
    },
    async subscribe(listener) {
      await Promise.resolve()
      check()
      listeners.add(listener)
      return {
        close: () => {
          listeners.delete(listener)
          return Promise.resolve()
        },
      }
    },
  }
}
