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
}

/**
 * How many restores to start now: enough that ready + starting instances cover the demand
 * (waiting + in flight), never more than maxInstances in total.
 */
export function instancesToStart(input: ScaleInput): number {
  const active = input.ready.length + input.starting
  const room = Math.max(0, input.maxInstances - active)
  if (room === 0 || input.waiting === 0) return 0
  const inflight = input.ready.reduce((sum, r) => sum + r.inflight, 0)
  const demand = input.waiting + inflight
  const capacity = active * input.concurrency
  if (demand <= capacity) return 0
  return Math.min(room, Math.ceil((demand - capacity) / input.concurrency))
}

/**
 * How many of the waiting requests (from the front of the queue) the current instances can
 * eventually serve. The rest are the ones a failed restore leaves without a slot.
 */
export function coveredWaiters(input: Omit<ScaleInput, 'maxInstances' | 'waiting'>): number {
  const inflight = input.ready.reduce((sum, r) => sum + r.inflight, 0)
  return Math.max(0, (input.ready.length + input.starting) * input.concurrency - inflight)
}
