/** Per-function bookkeeping of the instance pool (see instance-pool.ts). */
import type { ColdStartPhases, InstanceAddress, InstanceRecord, RuntimeKind } from '../shared/contracts.ts'
import { InitlessError } from '../shared/errors.ts'
import type { Manifest } from '../shared/manifest.ts'
import type { ReadyView } from './scaling.ts'

export interface Lease {
  readonly instanceId: string
  readonly address: InstanceAddress
  /** The request waited for an instance that became ready meanwhile (a cold start). */
  readonly isCold: boolean
  /** The request waited for a standby instance this gateway thawed meanwhile (never cold). */
  readonly isThawed: boolean
  /** The instance's cold-start phases, for cold requests. */
  readonly phases?: ColdStartPhases
  /** A cold request's instance was booted, not restored from a snapshot. */
  readonly isBooted?: boolean
  /** Time the request waited in the gateway for a slot, in ms. */
  readonly waitedMs: number
  release(): void
  /** The instance refused a connection: stop routing to it from this gateway, and release. */
  markDead(): void
}

export interface PoolStats {
  readonly fn: string
  readonly ready: number
  readonly starting: number
  readonly waiting: number
  readonly inflight: number
  /** Frozen standby instances of the active version, and the memory they hold (bytes). */
  readonly frozen: number
  readonly frozenMemoryBytes: number
  /** The learnt times the scaling rule uses (ms), once known (FnState.restoreMs, serviceMs). */
  readonly restoreMs?: number
  readonly serviceMs?: number
}

export interface ReadyEntry {
  readonly id: string
  readonly address: InstanceAddress
  /** Local epoch ms at which this gateway learnt the instance was ready. */
  readonly readyAt: number
  readonly phases?: ColdStartPhases
  /** How it was started (its registry record's runtime). */
  readonly runtime?: RuntimeKind
  /** The function version it runs (unset without the function registry). */
  readonly version?: string
  /** A standby instance thawed for requests (InstanceRecord.thawedAt): its phases are no cold start. */
  readonly isThawed?: boolean
}

/** A frozen standby instance a request may claim. */
export interface FrozenEntry {
  readonly id: string
  readonly version?: string
  readonly memoryBytes: number
}

export interface StartingEntry {
  /** Reserved by this gateway, reserve() not answered yet: not in the registry, keep on refresh. */
  isPending: boolean
  /** Ours, and its reservation is gone: counted until the job's outcome arrives (epoch ms). */
  goneAt?: number
}

export interface Waiter {
  readonly enqueuedAt: number
  readonly traceId: string
  /** Failed restores this request has waited through. */
  failures: number
  settle(result: { readonly lease: Lease } | { readonly error: InitlessError }): void
}

export interface FnState {
  readonly fn: string
  manifest: Manifest
  readonly ready: Map<string, ReadyEntry>
  /** This gateway's requests in flight per instance; survives the instance leaving `ready`. */
  readonly inflight: Map<string, number>
  readonly starting: Map<string, StartingEntry>
  /** Standby instances frozen in the registry (scaling.standby), claimable when requests wait. */
  readonly frozen: Map<string, FrozenEntry>
  /** Instances that refused connections: ignored until the registry drops them or the ttl ends. */
  readonly dead: Map<string, number>
  readonly lastTouch: Map<string, number>
  /**
   * The active version: only its instances take requests. Undefined: any instance (functions
   * served without the function registry).
   */
  version: string | undefined
  /**
   * Instances this gateway no longer routes to while it still has requests on them: their count is
   * shared in the registry (addInflight) so the executor stops them only once they are done.
   */
  readonly retired: Set<string>
  /** FIFO of requests waiting for a slot. */
  readonly waiters: Waiter[]
  /** Bumped on every change from events or local starts; a refresh that raced one is dropped. */
  generation: number
  isLoaded: boolean
  loading: Promise<void> | undefined
  /** reserve() said the function is full: no new reservation before this epoch ms. */
  fullUntil: number
  /** Learnt from this gateway's requests: time a request holds a slot, moving average (ms). */
  serviceMs: number | undefined
  /** Learnt from this gateway's restores: enqueue to ready, moving average (ms). */
  restoreMs: number | undefined
  /** The learnt times changed since they were last shared in the registry. */
  estimatesDirty: boolean
  /** Take a waiter out of the queue; undefined when it already left (settled once only). */
  removeWaiter(w: Waiter): Waiter | undefined
}

export function createFnState(manifest: Manifest): FnState {
  const waiters: Waiter[] = []
  return {
    fn: manifest.name,
    manifest,
    ready: new Map(),
    inflight: new Map(),
    starting: new Map(),
    frozen: new Map(),
    dead: new Map(),
    lastTouch: new Map(),
    version: undefined,
    retired: new Set(),
    waiters,
    generation: 0,
    isLoaded: false,
    loading: undefined,
    fullUntil: 0,
    serviceMs: undefined,
    restoreMs: undefined,
    estimatesDirty: false,
    removeWaiter(w) {
      const i = waiters.indexOf(w)
      if (i < 0) return undefined
      waiters.splice(i, 1)
      return w
    },
  }
}

/** 503 with a Retry-After hint (seconds, in details.retryAfterS). */
export function noCapacity(detail: string, retryAfterMs: number, cause?: unknown): InitlessError {
  return new InitlessError('ERR_GATEWAY_NO_CAPACITY', detail, {
    ...(cause === undefined ? {} : { cause }),
    details: { retryAfterS: Math.max(1, Math.ceil(retryAfterMs / 1000)) },
  })
}

export function clientClosed(fn: string): InitlessError {
  return new InitlessError('ERR_GATEWAY_CLIENT_CLOSED', `client closed the request while waiting for ${fn}`)
}

/** Ready instances with this gateway's load, as the scaling functions take them. */
export function views(s: FnState): ReadyView[] {
  return [...s.ready.values()].map((r) => ({
    id: r.id,
    readyAt: r.readyAt,
    inflight: s.inflight.get(r.id) ?? 0,
  }))
}

export function statsOf(s: FnState): PoolStats {
  let inflight = 0
  for (const n of s.inflight.values()) inflight += n
  const frozen = [...s.frozen.values()].filter((f) => isCurrentVersion(s, f))
  return {
    fn: s.fn,
    ready: s.ready.size,
    starting: s.starting.size,
    waiting: s.waiters.length,
    inflight,
    frozen: frozen.length,
    frozenMemoryBytes: frozen.reduce((sum, f) => sum + f.memoryBytes, 0),
    ...learntTimes(s),
  }
}

/** The learnt times that are known, as optional fields (stats, and what the registry shares). */
export function learntTimes(s: FnState): { restoreMs?: number; serviceMs?: number } {
  return {
    ...(s.restoreMs === undefined ? {} : { restoreMs: s.restoreMs }),
    ...(s.serviceMs === undefined ? {} : { serviceMs: s.serviceMs }),
  }
}

/**
 * Queue a request for a slot. It leaves the queue when handed a lease, when timeouts.start passes
 * (504), or when its client disconnects (the place is freed at once).
 */
export function waitForSlot(
  s: FnState,
  options: {
    readonly startedAt: number
    readonly traceId: string
    readonly signal?: AbortSignal | undefined
  },
): Promise<Lease> {
  const { signal } = options
  const { name, timeouts } = s.manifest
  return new Promise<Lease>((resolve, reject) => {
    const onAbort = () => s.removeWaiter(waiter)?.settle({ error: clientClosed(name) })
    const timer = setTimeout(() => {
      const detail = `no instance of ${name} was available within ${timeouts.start} ms`
      s.removeWaiter(waiter)?.settle({ error: new InitlessError('ERR_GATEWAY_TIMEOUT', detail) })
    }, timeouts.start)
    const waiter: Waiter = {
      enqueuedAt: options.startedAt,
      traceId: options.traceId,
      failures: 0,
      settle(result) {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if ('lease' in result) resolve(result.lease)
        else reject(result.error)
      },
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    s.waiters.push(waiter)
  })
}

/**
 * Take a slot on a ready instance. `onEnd` runs once, when the request is done (or found the
 * instance dead), after the slot was given back.
 */
export function createLease(
  s: FnState,
  id: string,
  at: { readonly startedAt: number; readonly hasWaited: boolean; readonly now: number },
  onEnd: (isDead: boolean) => void,
): Lease {
  const entry = s.ready.get(id)
  if (!entry) throw new InitlessError('ERR_INTERNAL', `instance ${id} is not ready`)
  s.inflight.set(id, (s.inflight.get(id) ?? 0) + 1)
  // Cold: the request waited, and the instance became ready while it did (thawed: not restored).
  const isNew = at.hasWaited && entry.readyAt >= at.startedAt
  const isThawed = isNew && entry.isThawed === true
  const isCold = isNew && !isThawed
  let isDone = false
  const finish = (isDead: boolean) => {
    if (isDone) return
    isDone = true
    const n = (s.inflight.get(id) ?? 1) - 1
    if (n > 0) s.inflight.set(id, n)
    else s.inflight.delete(id)
    onEnd(isDead)
  }
  return {
    instanceId: id,
    address: entry.address,
    isCold,
    isThawed,
    ...(isCold && entry.phases ? { phases: entry.phases } : {}),
    ...(isCold && entry.runtime === 'boot' ? { isBooted: true } : {}),
    // A lease taken on the fast path never waited: with a millisecond clock, now - startedAt
    // could still read 1 when the clock ticked in between, and the response would claim a wait.
    waitedMs: at.hasWaited ? at.now - at.startedAt : 0,
    release: () => finish(false),
    markDead: () => finish(true),
  }
}

/** Whether an instance runs the version requests go to (any, without the function registry). */
export function isCurrentVersion(s: Pick<FnState, 'version'>, r: { readonly version?: string }): boolean {
  return s.version === undefined || r.version === s.version
}

/** Bring one instance's local state in line with its registry record. True: it just became ready. */
export function applyRecord(s: FnState, r: InstanceRecord, now: number): boolean {
  if (r.state === 'frozen') {
    if (r.address)
      s.frozen.set(r.id, {
        id: r.id,
        memoryBytes: r.memoryBytes ?? 0,
        ...(r.version ? { version: r.version } : {}),
      })
    return false
  }
  s.frozen.delete(r.id)
  if (r.state === 'starting') {
    if (!s.ready.has(r.id) && !s.starting.has(r.id)) s.starting.set(r.id, { isPending: false })
  } else if (r.state === 'ready' && r.address && !s.dead.has(r.id)) {
    s.starting.delete(r.id)
    if (s.ready.has(r.id) || !isCurrentVersion(s, r)) return false
    s.ready.set(r.id, {
      id: r.id,
      address: r.address,
      readyAt: now,
      ...(r.phases ? { phases: r.phases } : {}),
      ...(r.runtime ? { runtime: r.runtime } : {}),
      ...(r.version ? { version: r.version } : {}),
      ...(r.thawedAt === undefined ? {} : { isThawed: true }),
    })
    return true
  } else if (r.state === 'draining') {
    s.ready.delete(r.id)
    s.starting.delete(r.id)
  }
  return false
}

/**
 * After a full read: forget instances the registry no longer has (except reservations still in
 * flight), and dead marks that expired or whose instance is gone. A missing reservation of a
 * restore this gateway started (`isOurs`) is treated as its vanishing event is (onEvent): counted
 * until the job's outcome says why. The read and that event travel on different connections, so
 * the read can come first; forgetting the reservation then started a replacement restore that no
 * failure was charged for.
 */
export function forgetMissing(
  s: FnState,
  seen: ReadonlySet<string>,
  now: number,
  isOurs: (id: string) => boolean,
): void {
  for (const id of s.ready.keys()) if (!seen.has(id)) s.ready.delete(id)
  for (const id of s.frozen.keys()) if (!seen.has(id)) s.frozen.delete(id)
  for (const [id, e] of s.starting) {
    if (seen.has(id) || e.isPending || e.goneAt !== undefined) continue
    if (isOurs(id)) e.goneAt = now
    else s.starting.delete(id)
  }
  for (const [id, until] of s.dead) if (!seen.has(id) || until < now) s.dead.delete(id)
  for (const id of s.lastTouch.keys()) if (!seen.has(id)) s.lastTouch.delete(id)
}
