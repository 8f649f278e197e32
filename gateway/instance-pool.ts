/**
 * The gateway's view of instances: which are ready (with this gateway's in-flight counts), which
 * are starting, and the requests waiting for a slot. Decides when to start restores.
 *
 * Hand-off: readiness comes from ONE source of truth, the registry. A `ready` event (pub/sub)
 * carries the record as the registry wrote it (older executors' events do not: then the pool reads
 * it) and the pool hands the instance to the waiters at once; a periodic full re-read
 * and a re-read after every reconnect repair missed events. This also hands out instances that
 * another gateway or a pre-warm started. The restore queue's outcome is used for what the registry
 * cannot say: that a restore failed (and why), plus a nudge to re-read the record on completion.
 */
import type { Logger } from 'pino'
import type { InstanceRecord, RegistryEvent, RestoreJobOptions, RestoreReason } from '../shared/contracts.ts'
import { errorMessage, InitlessError } from '../shared/errors.ts'
import type { Manifest } from '../shared/manifest.ts'
import type { InstanceRegistry, RegistrySubscription } from '../shared/registry.ts'
import { createRestoreClient } from '../shared/restore-client.ts'
import { restoreFailure, type RestoreOutcome, type RestoreQueue } from '../shared/restore-queue.ts'
import { coveredWaiters, ewma, instancesToStart, pickInstance, type ReadyView } from './scaling.ts'
import type { SlotQuota } from './slot-quota.ts'
import {
  applyRecord,
  clientClosed,
  isCurrentVersion,
  createFnState,
  forgetMissing,
  learntTimes,
  createLease,
  noCapacity,
  statsOf,
  views,
  waitForSlot,
  type FnState,
  type Lease,
  type PoolStats,
} from './pool-state.ts'

export type { Lease, PoolStats }

/**
 * Forces how the restores this gateway starts for one function run, instead of the function's
 * restore policy and pool (benchmarks, diagnostics). Carried in the job (RestoreJobData).
 */
export type StartOverride = RestoreJobOptions

export interface InstancePool {
  /** Subscribe to registry events and restore outcomes, start the periodic refresh. */
  start(): Promise<void>
  acquire(
    manifest: Manifest,
    options: { readonly traceId: string; readonly signal?: AbortSignal },
  ): Promise<Lease>
  /**
   * acquire()'s no-wait case, synchronously: a slot on a ready instance, or undefined when the
   * request would have to wait (or the function was not read from the registry yet, or the pool is
   * closing). Then call acquire().
   */
  tryAcquire(manifest: Manifest): Lease | undefined
  /** Reserve and enqueue up to `count` restores (bounded by maxInstances). Returns their ids. */
  prewarm(manifest: Manifest, count: number, traceId: string): Promise<string[]>
  stats(): PoolStats[]
  /** Set (or with `undefined` clear) the start override of `fn`. Held by this gateway only. */
  setStartOverride(fn: string, override: StartOverride | undefined): void
  startOverride(fn: string): StartOverride | undefined
  /**
   * Route `fn`'s requests only to instances of `version` from now on (an activation in the
   * function registry). Instances of other versions take no new requests; those with requests in
   * flight here are reported to the registry until they are done (drained).
   */
  setVersion(fn: string, version: string | undefined): void
  /** The function was deleted: its waiting requests fail with ERR_FUNCTION_NOT_FOUND. */
  forget(fn: string): void
  /** Called when a restore this gateway enqueued became ready (its record carries the phases). */
  onRestored(listener: (record: InstanceRecord) => void): () => void
  /** Stop; waiting requests fail with 503. Idempotent. */
  close(): Promise<void>
}

export interface InstancePoolDeps {
  readonly registry: Pick<
    InstanceRegistry,
    | 'reserve'
    | 'claimStandby'
    | 'withdraw'
    | 'get'
    | 'list'
    | 'touch'
    | 'addInflight'
    | 'subscribe'
    | 'scalingEstimates'
    | 'saveScalingEstimates'
  >
  readonly queue: RestoreQueue
  readonly logger: Logger
  readonly now?: () => number
  /** Default: the restore client's one format (shared/restore-client.ts). */
  readonly newInstanceId?: (fn: string) => string
  /** Full registry re-read, in ms. Default 5000. */
  readonly refreshIntervalMs?: number
  /** Restores a waiting request may see fail before it fails too. Default 2. */
  readonly maxRestoreRetries?: number
  /** Retry-After for no-capacity answers, in ms. Default 1000. */
  readonly retryAfterMs?: number
  /** At most one last-use write per instance per this many ms. Default 1000. */
  readonly touchIntervalMs?: number
  /** How long a refusing instance is ignored even if the registry still lists it, in ms. Default 30000. */
  readonly deadTtlMs?: number
  /**
   * The slots this process may fill when it is one worker of a multi-process gateway. Absent: all
   * of every instance's `scaling.concurrency`.
   */
  readonly slots?: SlotQuota
}

/** How long a withdrawn reservation of ours waits for its job's failure to be reported (ms). */
const GONE_GRACE_MS = 10_000

/** After reserve() says the function is full, hold further reservations this long (ms). */
const FULL_BACKOFF_MS = 1000

/** Weights of a new sample in the learnt service and restore times (instancesToStart). */
const SERVICE_WEIGHT = 0.2
const RESTORE_WEIGHT = 0.3
/** A request answered within the clock's millisecond counts as this long (ms). */
const MIN_SERVICE_MS = 0.5

/** Create the pool. Nothing happens until start(). */
export function createInstancePool(deps: InstancePoolDeps): InstancePool {
  const { registry } = deps
  const log = deps.logger.child({ module: 'instance-pool' })
  const now = deps.now ?? Date.now
  const restores = createRestoreClient({
    registry,
    queue: deps.queue,
    now,
    ...(deps.newInstanceId ? { newInstanceId: deps.newInstanceId } : {}),
  })
  const maxRetries = deps.maxRestoreRetries ?? 2
  const retryAfterMs = deps.retryAfterMs ?? 1000
  const touchIntervalMs = deps.touchIntervalMs ?? 1000
  const deadTtlMs = deps.deadTtlMs ?? 30_000
  const fns = new Map<string, FnState>()
  /** Restores this gateway enqueued and has not seen end: instance id -> fn. */
  const ours = new Map<string, { fn: string; since: number }>()
  const restoredListeners = new Set<(record: InstanceRecord) => void>()
  const overrides = new Map<string, StartOverride>()
  /** Active version per function (setVersion), applied to its state when that is created. */
  const versions = new Map<string, string>()
  let subscription: RegistrySubscription | undefined
  let stopOutcomes: (() => void) | undefined
  let timer: NodeJS.Timeout | undefined
  let closing: Promise<void> | undefined
  const { slots } = deps

  /**
   * Ready instances with their load as this process may use them: slots held by other worker
   * processes count as in flight, so an instance is full here once this process's slots are.
   */
  const slotViews = (s: FnState): ReadyView[] => {
    const all = views(s)
    if (!slots) return all
    const { concurrency } = s.manifest.scaling
    return all.map((v) => ({ ...v, inflight: v.inflight + concurrency - slots.held(s.fn, v.id) }))
  }

  /** Tell the slot ledger what this process's waiters still need (worker processes only). */
  const demand = (s: FnState) =>
    slots?.demand(s.fn, s.waiters.length, [...s.ready.keys()], s.manifest.scaling.concurrency)

  const lease = (s: FnState, id: string, startedAt: number, hasWaited: boolean): Lease => {
    const leasedAt = now()
    return createLease(s, id, { startedAt, hasWaited, now: leasedAt }, (isDead) => {
      if (s.retired.has(id)) reportInflight(s, id, -1)
      slots?.released(s.fn, id, s.inflight.get(id) ?? 0)
      if (isDead) {
        log.warn({ fn: s.fn, instanceId: id }, 'instance refused connection')
        s.ready.delete(id)
        s.dead.set(id, now() + deadTtlMs)
        s.generation++
      } else {
        s.serviceMs = ewma(s.serviceMs, Math.max(MIN_SERVICE_MS, now() - leasedAt), SERVICE_WEIGHT)
        s.estimatesDirty = true
        if (now() - (s.lastTouch.get(id) ?? 0) >= touchIntervalMs) {
          s.lastTouch.set(id, now())
          registry
            .touch(s.fn, id, now())
            .catch((err) => log.debug({ err: errorMessage(err) }, 'touch failed'))
        }
      }
      dispatch(s)
      scale(s)
    })
  }

  const reportInflight = (s: FnState, id: string, delta: number) => {
    if (delta < 0 && !s.inflight.get(id)) s.retired.delete(id)
    registry
      .addInflight(s.fn, id, delta)
      .catch((err: unknown) =>
        log.warn({ fn: s.fn, instanceId: id, err: errorMessage(err) }, 'in-flight count not shared'),
      )
  }

  /** Stop routing to an instance; requests still on it are counted in the registry until done. */
  const retire = (s: FnState, id: string) => {
    s.ready.delete(id)
    const n = s.inflight.get(id) ?? 0
    if (n > 0 && !s.retired.has(id)) {
      s.retired.add(id)
      reportInflight(s, id, n)
    }
  }

  /** Hand free slots to waiters, oldest first. */
  const dispatch = (s: FnState) => {
    while (s.waiters.length) {
      const pick = pickInstance(slotViews(s), s.manifest.scaling.concurrency)
      if (!pick) break
      const w = s.waiters.shift()
      w?.settle({ lease: lease(s, pick.id, w.enqueuedAt, true) })
    }
    demand(s)
  }

  /**
   * Claim frozen standby instances for the waiters that neither the free slots nor the instances on
   * their way cover. A claim counts as starting until the registry answers; the request is sent as
   * soon as it is ready here, while its executor thaws it (the kernel queues the connection).
   */
  const claimStandby = (s: FnState, waiting: number) => {
    const concurrency = s.manifest.scaling.concurrency
    let uncovered = waiting - coveredWaiters({ ready: slotViews(s), starting: s.starting.size, concurrency })
    for (const f of s.frozen.values()) {
      if (uncovered <= 0) return
      if (!isCurrentVersion(s, f)) continue
      s.frozen.delete(f.id)
      s.starting.set(f.id, { isPending: true })
      s.generation++
      uncovered -= concurrency
      void claim(s, f.id)
    }
  }

  const claim = async (s: FnState, id: string) => {
    const record = await registry.claimStandby(s.fn, id, s.version).catch((err: unknown) => {
      log.warn({ fn: s.fn, instanceId: id, err: errorMessage(err) }, 'standby claim failed')
      return undefined
    })
    s.starting.delete(id)
    s.generation++
    if (record) {
      log.info({ fn: s.fn, instanceId: id }, 'standby claimed')
      apply(s, record)
    }
    dispatch(s)
    scale(s)
  }

  const scale = (s: FnState, traceId?: string) => {
    // A worker process scales only as the function's scaler, for the demand of all workers that
    // lack slots in use (slot-ledger.ts): a demand split across workers is counted once.
    const waiting = slots ? slots.shortfall(s.fn) : s.waiters.length
    // No waiters, no restores to start (instancesToStart): skip the work on every released lease.
    if (closing || !s.isLoaded || !waiting) return
    if (s.frozen.size) claimStandby(s, waiting)
    if (now() < s.fullUntil) return
    const n = instancesToStart({
      ready: slotViews(s),
      starting: s.starting.size,
      waiting,
      concurrency: s.manifest.scaling.concurrency,
      maxInstances: s.manifest.scaling.maxInstances,
      restoreMs: s.restoreMs,
      serviceMs: s.serviceMs,
    })
    const trace = traceId ?? s.waiters.at(-1)?.traceId ?? 'gateway'
    for (let i = 0; i < n; i++) void startInstance(s, 'demand', trace)
  }

  const startInstance = async (
    s: FnState,
    reason: RestoreReason,
    traceId: string,
  ): Promise<string | undefined> => {
    const id = restores.newInstanceId(s.fn)
    s.starting.set(id, { isPending: true })
    s.generation++
    try {
      const started = await restores.start({
        fn: s.fn,
        maxInstances: s.manifest.scaling.maxInstances,
        reason,
        traceId,
        instanceId: id,
        ...(overrides.has(s.fn) ? { options: overrides.get(s.fn) } : {}),
        onReserved: () => {
          if (closing) throw new Error('gateway is shutting down')
          const entry = s.starting.get(id)
          if (entry) entry.isPending = false
          ours.set(id, { fn: s.fn, since: now() })
        },
      })
      if (!started) {
        s.starting.delete(id)
        s.generation++
        s.fullUntil = now() + FULL_BACKOFF_MS
        log.debug({ fn: s.fn }, 'function at max instances')
        refresh(s).catch((err) => log.debug({ fn: s.fn, err: errorMessage(err) }, 'registry refresh failed'))
        return undefined
      }
      log.info(
        { fn: s.fn, instanceId: id, reason, traceId, restoreMs: s.restoreMs, serviceMs: s.serviceMs },
        'restore enqueued',
      )
      return id
    } catch (err) {
      // The restore client withdrew the reservation.
      ours.delete(id)
      log.warn({ fn: s.fn, instanceId: id, err: errorMessage(err) }, 'could not start instance')
      startFailed(
        s,
        id,
        noCapacity(`cannot start an instance of ${s.fn}: registry or queue unavailable`, retryAfterMs, err),
      )
      return undefined
    }
  }

  /** A start failed: the waiters it was meant for retry on another restore, up to maxRetries. */
  const startFailed = (s: FnState, id: string, err: InitlessError) => {
    s.starting.delete(id)
    s.generation++
    // A worker process started it for the waiters of every worker: theirs count it too.
    slots?.startFailed(s.fn, err)
    chargeFailure(s, err, s.starting.size)
  }

  /**
   * The waiters that the ready instances and `starting` more do not cover count a failed start.
   * Another process's failed start is charged against the ready ones only: which of the starts this
   * process sees is the failed one, it cannot tell, and counting it would leave its waiters
   * uncharged while the scaler retries for them.
   */
  const chargeFailure = (s: FnState, err: InitlessError, starting: number) => {
    const covered = coveredWaiters({
      ready: slotViews(s),
      starting,
      concurrency: s.manifest.scaling.concurrency,
    })
    for (const w of s.waiters.slice(covered)) {
      w.failures++
      if (!err.retryable || w.failures > maxRetries) s.removeWaiter(w)?.settle({ error: err })
    }
    demand(s)
    scale(s)
  }

  const apply = (s: FnState, r: InstanceRecord) => {
    if (s.ready.has(r.id) && (r.state === 'draining' || !isCurrentVersion(s, r))) retire(s, r.id)
    if (!applyRecord(s, r, now())) return
    const mine = ours.get(r.id)
    if (!mine) return
    ours.delete(r.id)
    s.restoreMs = ewma(s.restoreMs, now() - mine.since, RESTORE_WEIGHT)
    s.estimatesDirty = true
    for (const l of restoredListeners) l(r)
  }

  /** Re-read one instance (after a ready event or a completed job) and hand it out. */
  const check = async (s: FnState, id: string) => {
    try {
      const r = await registry.get(s.fn, id)
      if (!r) return
      apply(s, r)
      s.generation++
      dispatch(s)
      scale(s)
    } catch (err) {
      log.debug({ fn: s.fn, instanceId: id, err: errorMessage(err) }, 'instance read failed')
    }
  }

  /**
   * Full re-read of a function. Discarded when an event changed the state meanwhile. The first
   * read also takes the learnt times other gateways shared, if this one has none yet.
   */
  const refresh = async (s: FnState, isInitial = false) => {
    const generation = s.generation
    const [records, shared] = await Promise.all([
      registry.list(s.fn),
      isInitial ? registry.scalingEstimates(s.fn).catch(() => undefined) : undefined,
    ])
    if (shared) {
      s.restoreMs ??= shared.restoreMs
      s.serviceMs ??= shared.serviceMs
    }
    if (!isInitial && generation !== s.generation) return
    forgetMissing(s, new Set(records.map((r) => r.id)), now(), (id) => ours.has(id))
    for (const r of records) apply(s, r)
    s.isLoaded = true
    dispatch(s)
    scale(s)
  }

  const stateFor = (manifest: Manifest): FnState => {
    let s = fns.get(manifest.name)
    if (!s) {
      fns.set(manifest.name, (s = createFnState(manifest)))
      s.version = versions.get(manifest.name)
    }
    s.manifest = manifest
    return s
  }

  /** The function's state, read from the registry first if this gateway has not seen it yet. */
  const loaded = async (manifest: Manifest): Promise<FnState> => {
    const s = stateFor(manifest)
    if (s.isLoaded) return s
    s.loading ??= refresh(s, true).finally(() => (s.loading = undefined))
    await s.loading.catch((err) => {
      log.warn({ fn: s.fn, err: errorMessage(err) }, 'registry read failed')
      throw noCapacity('instance registry unavailable', retryAfterMs, err)
    })
    return s
  }

  const onEvent = (e: RegistryEvent) => {
    if (e.type !== 'instance') return
    const s = fns.get(e.fn)
    if (!s?.isLoaded) return
    if (e.state === 'ready' || e.state === 'frozen') {
      // The event carries the record (an older executor's does not: read it). A standby reservation
      // carries none and is not claimable yet: its markFrozen event will.
      if (!e.record) return e.state === 'ready' ? void check(s, e.id) : undefined
      apply(s, e.record)
    } else if (e.state === 'starting') {
      apply(s, { id: e.id, fn: e.fn, state: 'starting', hostId: '', createdAt: 0 })
    } else {
      s.frozen.delete(e.id)
      if (e.state === 'draining') retire(s, e.id)
      else s.ready.delete(e.id)
      const starting = s.starting.get(e.id)
      // Our restore's reservation vanished: the executor gave up. Keep counting it until the job's
      // outcome says why, so the failure is charged to the waiters instead of silently replaced.
      if (starting && ours.has(e.id)) starting.goneAt ??= now()
      else s.starting.delete(e.id)
      if (e.state === 'gone') {
        s.dead.delete(e.id)
        s.fullUntil = 0
      }
      // Slots of an instance no longer routed to go back now: the ledger counts free slots as
      // capacity a waiting worker will get (slot-ledger.ts), so they must not linger.
      slots?.prune(s.fn, (id) => id === e.id)
    }
    s.generation++
    dispatch(s)
    scale(s)
  }

  const onOutcome = (o: RestoreOutcome) => {
    const mine = ours.get(o.instanceId)
    const s = mine && fns.get(mine.fn)
    if (!s) return
    if (o.ok) return void check(s, o.instanceId)
    ours.delete(o.instanceId)
    registry.withdraw(s.fn, o.instanceId).catch(() => undefined)
    const err = restoreFailure(s.fn, o.instanceId, o.failure)
    log.warn(
      { fn: s.fn, instanceId: o.instanceId, code: err.code, reason: o.failure.message },
      'restore failed',
    )
    startFailed(s, o.instanceId, err)
  }

  /** Share the learnt times that changed since the last write (one write per function). */
  const saveEstimates = (s: FnState) => {
    if (!s.estimatesDirty) return Promise.resolve()
    s.estimatesDirty = false
    return registry.saveScalingEstimates(s.fn, { at: now(), ...learntTimes(s) }).catch((err: unknown) => {
      s.estimatesDirty = true
      log.debug({ fn: s.fn, err: errorMessage(err) }, 'scaling estimates not saved')
    })
  }

  const refreshAll = () => {
    for (const s of fns.values()) {
      if (!s.isLoaded) continue
      void saveEstimates(s)
      slots?.prune(s.fn, (id) => !s.ready.has(id))
      refresh(s).catch((err) => log.warn({ fn: s.fn, err: errorMessage(err) }, 'registry refresh failed'))
      for (const [id, e] of s.starting) {
        if (e.goneAt !== undefined && now() - e.goneAt > GONE_GRACE_MS) {
          ours.delete(id)
          startFailed(s, id, new InitlessError('ERR_RESTORE_FAILED', `restore of ${s.fn} was abandoned`))
        }
      }
    }
    // A restore whose end we never heard of (events lost in an outage) is forgotten after an hour.
    for (const [id, o] of ours) if (now() - o.since > 3_600_000) ours.delete(id)
  }

  /** A lease without waiting, on a function already loaded, when no request is queued before us. */
  const tryLease = (s: FnState, startedAt: number): Lease | undefined => {
    if (s.waiters.length) return undefined
    const pick = pickInstance(slotViews(s), s.manifest.scaling.concurrency)
    return pick && lease(s, pick.id, startedAt, false)
  }

  return {
    async start() {
      slots?.attach(
        (fn, id) => fns.get(fn)?.inflight.get(id) ?? 0,
        (fn) => {
          const s = fns.get(fn)
          if (!s) return
          dispatch(s)
          scale(s)
        },
        (fn, err) => {
          const s = fns.get(fn)
          if (s) chargeFailure(s, err, 0)
        },
      )
      stopOutcomes = restores.onOutcome(onOutcome)
      subscription = await registry.subscribe({ onEvent, onResync: refreshAll })
      timer = setInterval(refreshAll, deps.refreshIntervalMs ?? 5000)
      timer.unref()
    },

    async acquire(manifest, options) {
      if (closing) throw noCapacity('gateway is shutting down', retryAfterMs)
      const s = await loaded(manifest)
      if (options.signal?.aborted) throw clientClosed(manifest.name)
      const startedAt = now()
      const ready = tryLease(s, startedAt)
      if (ready) return ready
      if (s.waiters.length >= manifest.scaling.queueLimit) {
        scale(s, options.traceId)
        throw noCapacity(
          `${manifest.name} has ${s.waiters.length} requests waiting (queue limit)`,
          retryAfterMs,
        )
      }
      const waiting = waitForSlot(s, { startedAt, traceId: options.traceId, signal: options.signal })
      demand(s)
      scale(s, options.traceId)
      return waiting
    },

    tryAcquire(manifest) {
      const s = fns.get(manifest.name)
      if (closing || !s?.isLoaded) return undefined
      s.manifest = manifest
      return tryLease(s, now())
    },

    async prewarm(manifest, count, traceId) {
      const s = await loaded(manifest)
      const ids = await Promise.all(Array.from({ length: count }, () => startInstance(s, 'prewarm', traceId)))
      return ids.filter((id): id is string => id !== undefined)
    },

    stats: () => [...fns.values()].map(statsOf),

    setStartOverride(fn, override) {
      if (override && (override.runtime !== undefined || override.noPool !== undefined))
        overrides.set(fn, override)
      else overrides.delete(fn)
    },

    startOverride: (fn) => overrides.get(fn),

    setVersion(fn, version) {
      if (version === undefined) versions.delete(fn)
      else versions.set(fn, version)
      const s = fns.get(fn)
      if (!s || s.version === version) return
      s.version = version
      for (const entry of [...s.ready.values()]) if (!isCurrentVersion(s, entry)) retire(s, entry.id)
      s.generation++
      log.info({ fn, version }, 'routing to version')
      if (s.isLoaded)
        refresh(s).catch((err) => log.warn({ fn, err: errorMessage(err) }, 'registry refresh failed'))
    },

    forget(fn) {
      versions.delete(fn)
      const s = fns.get(fn)
      if (!s) return
      fns.delete(fn)
      for (const w of [...s.waiters])
        s.removeWaiter(w)?.settle({
          error: new InitlessError('ERR_FUNCTION_NOT_FOUND', `function ${fn} was deleted`),
        })
    },

    onRestored(listener) {
      restoredListeners.add(listener)
      return () => restoredListeners.delete(listener)
    },

    close() {
      closing ??= (async () => {
        clearInterval(timer)
        stopOutcomes?.()
        for (const s of fns.values()) {
          for (const w of [...s.waiters])
            s.removeWaiter(w)?.settle({ error: noCapacity('gateway is shutting down', retryAfterMs) })
        }
        await Promise.all([...fns.values()].map(saveEstimates))
        await subscription?.close()
      })()
      return closing
    },
  }
}
