/**
 * Pure scaling decisions, kept free of I/O so every case can be a row in a table test.
 * Capacity is counted in request slots: an instance serves `concurrency` requests at once.
 */

export interface ReadyView {
  readonly id: string
  /** Requests this gateway has in flight on the instance. */
  readonly inflight: number
  /** Local epoch ms at which this gateway saw the instance ready (ties go to the older one). */
  readonly readyAt: number
}

/** The least-loaded ready instance with a free slot, or undefined when all are full. */
export function pickInstance(ready: Iterable<ReadyView>, concurrency: number): ReadyView | undefined {
  let best: ReadyView | undefined
  for (const r of ready) {
    if (r.inflight >= concurrency) continue
    if (
      !best ||
      r.inflight < best.inflight ||
      (r.inflight === best.inflight &&
        (r.readyAt < best.readyAt || (r.readyAt === best.readyAt && r.id < best.id)))
    ) {
      best = r
    }
  }
  return best
}

export interface ScaleInput {
  /** Ready instances and their in-flight counts. */
  readonly ready: readonly Pick<ReadyView, 'inflight'>[]
  /** Instances reserved or restoring (ours and other gateways'). */
  readonly starting: number
  /** Requests waiting for a slot. */
  readonly waiting: number
  readonly concurrency: number
  readonly maxInstances: number
  /** Learnt: how long this function's restores take, enqueue to ready (ms); unknown at first. */
  readonly restoreMs?: number | undefined
  /** Learnt: how long one of its requests holds a slot (ms); unknown at first. */
  readonly serviceMs?: number | undefined
}

/**
 * The queue one more instance is worth starting for: longer to drain than this many restore times.
 * More than two because a restore's wall time understates its cost: CRIU, the lazy-pages daemon's
 * push and the new instance's first answers take CPU from the instances already answering
 * (bench/README.md, "Burst: the drain horizon").
 */
export const DRAIN_RESTORE_TIMES = 3

/**
 * How many restores to start now.
 *
 * By slots: enough that ready + starting instances cover the demand (waiting + in flight), never
 * more than maxInstances in total.
 *
 * By drain time, once the function's restore and service times are known: a new instance only
 * helps if the waiting requests would still be there, with work to spare, when it is ready. An
 * instance works through `concurrency / serviceMs` requests per ms (optimistic for a CPU-bound
 * function at low load; the service time a burst measures corrects it within a few answers). The
 * instances needed are those that drain the queue within DRAIN_RESTORE_TIMES restore times, and
 * the slots rule is the upper bound. Several, not one: restores are CPU-bound and slow the
 * instances already answering (on 2 CPUs, three at once take 3x longer each), so an instance that
 * would find only the tail of the queue costs more than it takes off it. Measured (bench/README.md,
 * "Burst"): 200 requests to spring-greeting (concurrency 50), one instance answering them all had a
 * p99 of 495-545 ms, one restore at a time 596-788 ms, the slots rule's 4 restores 846-1405 ms.
 */
export function instancesToStart(input: ScaleInput): number {
  const active = input.ready.length + input.starting
  const room = Math.max(0, input.maxInstances - active)
  if (room === 0 || input.waiting === 0) return 0
  const inflight = input.ready.reduce((sum, r) => sum + r.inflight, 0)
  const demand = input.waiting + inflight
  const capacity = active * input.concurrency
  if (demand <= capacity) return 0
  const bySlots = Math.min(room, Math.ceil((demand - capacity) / input.concurrency))
  const { restoreMs, serviceMs } = input
  if (!restoreMs || !serviceMs) return bySlots
  const drained = Math.ceil(
    (input.waiting * serviceMs) / (input.concurrency * DRAIN_RESTORE_TIMES * restoreMs),
  )
  return Math.min(bySlots, Math.max(active === 0 ? 1 : 0, drained - active))
}

/** Exponentially weighted moving average: `sample` weighs `weight`; the first sample is taken as is. */
export function ewma(previous: number | undefined, sample: number, weight: number): number {
  return previous === undefined ? sample : previous + weight * (sample - previous)
}

/**
 * How many of the waiting requests (from the front of the queue) the current instances can
 * eventually serve. The rest are the ones a failed restore leaves without a slot.
 */
export function coveredWaiters(input: Omit<ScaleInput, 'maxInstances' | 'waiting'>): number {
  const inflight = input.ready.reduce((sum, r) => sum + r.inflight, 0)
  return Math.max(0, (input.ready.length + input.starting) * input.concurrency - inflight)
}
