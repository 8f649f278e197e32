/**
 * In-memory FunctionRegistry for unit tests: the Redis adapter's semantics (checked by the shared
 * cases in test/function-registry.test.ts), events delivered asynchronously like pub/sub.
 */
import type {
  FunctionEvent,
  FunctionEventListener,
  FunctionRecord,
  FunctionRegistry,
  FunctionVersion,
  HostBake,
} from './function-registry.ts'

export interface FakeFunctionRegistry extends FunctionRegistry {
  /** Every event published so far, in order. */
  readonly events: readonly FunctionEvent[]
  /** While false every operation rejects, as the Redis adapter does while Redis is down. */
  setAvailable(isAvailable: boolean): void
  /** Stored build contexts (`fn:version`), to check that nothing is left. */
  contextKeys(): string[]
}

interface Stored {
  active?: string
  activatedAt?: number
  versions: Map<string, FunctionVersion>
  /** markBaked's records per version, kept apart from the version as Redis keeps them. */
  bakes: Map<string, Record<string, HostBake>>
}

export function createFakeFunctionRegistry(options: { now?: () => number } = {}): FakeFunctionRegistry {
  const now = options.now ?? Date.now
  const fns = new Map<string, Stored>()
  const contexts = new Map<string, Buffer>()
  const listeners = new Set<FunctionEventListener>()
  const events: FunctionEvent[] = []
  const locks = new Map<string, { holder: string; until: number }>()
  let isAvailable = true
  const check = () => {
    if (!isAvailable) return Promise.reject(new Error('fake function registry unavailable'))
    return Promise.resolve()
  }
  const publish = (e: FunctionEvent) => {
    events.push(e)
    for (const l of [...listeners]) queueMicrotask(() => listeners.has(l) && l.onEvent(e))
  }
  const snapshot = (name: string): FunctionRecord | undefined => {
    const s = fns.get(name)
    if (!s) return undefined
    const versions = [...s.versions.values()]
      .map((v) => ({ ...v, bakedOn: { ...v.bakedOn, ...s.bakes.get(v.version) } }))
      .sort((a, b) => b.createdAt - a.createdAt || (a.version < b.version ? -1 : 1))
    // A copy through JSON, as Redis hands out: callers never share the stored objects.
    return JSON.parse(
      JSON.stringify({
        name,
        ...(s.active ? { active: s.active } : {}),
        ...(s.activatedAt ? { activatedAt: s.activatedAt } : {}),
        versions,
      }),
    ) as FunctionRecord
  }

  return {
    get events() {
      return events
    },
    setAvailable(v) {
      isAvailable = v
    },
    contextKeys: () => [...contexts.keys()].sort(),
    async get(name) {
      await check()
      return snapshot(name)
    },
    async list() {
      await check()
      return [...fns.keys()]
        .sort()
        .map(snapshot)
        .filter((r): r is FunctionRecord => r !== undefined)
    },
    async putVersion(name, version) {
      await check()
      let s = fns.get(name)
      if (!s) fns.set(name, (s = { versions: new Map(), bakes: new Map() }))
      s.versions.set(version.version, JSON.parse(JSON.stringify(version)) as FunctionVersion)
      publish({ type: 'function-registry', fn: name, action: 'version', version: version.version })
    },
    async activate(name, version) {
      await check()
      const s = fns.get(name)
      if (s?.versions.get(version)?.state !== 'ready') return false
      s.active = version
      s.activatedAt = now()
      publish({ type: 'function-registry', fn: name, action: 'activated', version })
      return true
    },
    async markBaked(name, version, host, bake) {
      await check()
      const s = fns.get(name)
      if (!s?.versions.has(version)) return false
      s.bakes.set(version, {
        ...s.bakes.get(version),
        [host]: { at: bake.at, snapshotKey: bake.snapshotKey },
      })
      publish({ type: 'function-registry', fn: name, action: 'version', version })
      return true
    },
    async removeVersions(name, versions) {
      await check()
      if (!versions.length) return
      const s = fns.get(name)
      for (const v of versions) {
        if (v === s?.active) continue
        s?.versions.delete(v)
        s?.bakes.delete(v)
        contexts.delete(`${name}:${v}`)
      }
      publish({ type: 'function-registry', fn: name, action: 'versions-removed' })
    },
    async remove(name) {
      await check()
      const s = fns.get(name)
      if (!s) return false
      for (const v of s.versions.keys()) contexts.delete(`${name}:${v}`)
      fns.delete(name)
      publish({ type: 'function-registry', fn: name, action: 'deleted' })
      return true
    },
    async saveContext(name, version, tar) {
      await check()
      contexts.set(`${name}:${version}`, Buffer.from(tar))
    },
    async context(name, version) {
      await check()
      const c = contexts.get(`${name}:${version}`)
      return c && Buffer.from(c)
    },
    async lock(name, holder, ttlMs) {
      await check()
      const held = locks.get(name)
      if (held && held.until > now()) return held.holder
      locks.set(name, { holder, until: now() + ttlMs })
      return undefined
    },
    async unlock(name, holder) {
      await check()
      if (locks.get(name)?.holder === holder) locks.delete(name)
    },
    async changeHolder(name) {
      await check()
      const held = locks.get(name)
      return held && held.until > now() ? held.holder : undefined
    },
    async subscribe(listener) {
      await check()
      listeners.add(listener)
      return {
        close() {
          listeners.delete(listener)
          return Promise.resolve()
        },
      }
    },
  }
}
