/**
 * The primary's ledger of request slots when the gateway runs as several worker processes
 * (INITLESS_GATEWAY_WORKERS > 1). Every slot of an instance (`scaling.concurrency` of them) is held
 * by at most one worker at a time, and a worker sends a request to an instance only on a slot it
 * holds: the function's concurrency stays exact across the workers without a message per request.
 *
 * Workers keep the slots they were granted while they use them. A worker that has requests waiting
 * asks for more (`want`); the ledger grants free slots, and when there are none it recalls the idle
 * ones of the other holders (`recall`): those give back what is idle at once and every further slot
 * as its request ends, until the ledger says the demand is met (`settle`). Once every recalled
 * holder has answered and demand is still unmet, the wanting worker hears `short`: the slots it
 * cannot get are in use, so its scaling rule may start instances. A worker that exits loses its
 * slots (its connections, and so its requests, died with it).
 *
 * Pure: the caller delivers the messages returned (primary.ts over node:cluster's IPC).
 */

/** Worker -> primary. `need` is the worker's whole unmet demand for the function (0: none). */
export type ToPrimary =
  | {
      readonly t: 'want'
      readonly fn: string
      readonly need: number
      /** The function's ready instances and their concurrency. */
      readonly ids: readonly string[]
      readonly concurrency: number
    }
  | { readonly t: 'give'; readonly fn: string; readonly id: string; readonly n: number }
  /** The answer to a recall: `n` slots given back (0: all it holds are in use). */
  | { readonly t: 'recalled'; readonly fn: string; readonly id: string; readonly n: number }

/** Primary -> worker. */
export type ToWorker =
  | { readonly t: 'grant'; readonly fn: string; readonly id: string; readonly n: number }
  | { readonly t: 'recall'; readonly fn: string; readonly id: string }
  | { readonly t: 'settle'; readonly fn: string; readonly id: string }
  | { readonly t: 'short'; readonly fn: string }

export interface Outgoing {
  readonly worker: number
  readonly message: ToWorker
}

interface InstanceSlots {
  concurrency: number
  /** Worker id -> slots it holds. */
  readonly held: Map<number, number>
  /** Holders asked to give back, and whether they have answered yet. */
  readonly recalled: Map<number, boolean>
}

interface Want {
  need: number
  ids: readonly string[]
  /** `short` was sent for this demand (sent again only after the demand changed). */
  isShortSent: boolean
}

export interface SlotLedger {
  /** A message from worker `worker`; returns the messages to deliver. */
  receive(worker: number, message: ToPrimary): Outgoing[]
  /** Worker `worker` exited: its slots and demand are dropped. */
  workerGone(worker: number): Outgoing[]
  /** How many worker processes share the slots (for a fair first grant). */
  setWorkers(count: number): void
  /** Slots held per instance (`fn/id` -> worker -> count), for tests and diagnostics. */
  held(): Map<string, Map<number, number>>
}

const sum = (m: ReadonlyMap<number, number>): number => {
  let n = 0
  for (const v of m.values()) n += v
  return n
}

export function createSlotLedger(options: { workers: number }): SlotLedger {
  let workers = Math.max(1, options.workers)
  /** fn -> instance id -> slots. */
  const fns = new Map<string, Map<string, InstanceSlots>>()
  /** fn -> worker -> unmet demand, in arrival order (served first come, first served). */
  const wants = new Map<string, Map<number, Want>>()

  const slotsOf = (fn: string, id: string, concurrency?: number): InstanceSlots => {
    let byId = fns.get(fn)
    if (!byId) fns.set(fn, (byId = new Map<string, InstanceSlots>()))
    let s = byId.get(id)
    if (!s) byId.set(id, (s = { concurrency: concurrency ?? 0, held: new Map(), recalled: new Map() }))
    else if (concurrency !== undefined) s.concurrency = concurrency
    return s
  }

  const grant = (out: Outgoing[], fn: string, id: string, s: InstanceSlots, worker: number, n: number) => {
    s.held.set(worker, (s.held.get(worker) ?? 0) + n)
    out.push({ worker, message: { t: 'grant', fn, id, n } })
  }

  /** Hand free slots to the function's wanting workers, then recall or report what is missing. */
  const serve = (fn: string, out: Outgoing[]) => {
    const byId = fns.get(fn)
    const byWorker = wants.get(fn)
    if (byId && byWorker) {
      for (const [worker, want] of byWorker) {
        for (const id of want.ids) {
          const s = byId.get(id)
          if (!s || want.need === 0) continue
          const free = s.concurrency - sum(s.held)
          if (free <= 0) continue
          // Beyond the need, up to a fair share: a busy worker then rarely has to ask again.
          const share = Math.ceil(s.concurrency / workers) - (s.held.get(worker) ?? 0)
          grant(out, fn, id, s, worker, Math.min(free, Math.max(want.need, share)))
          want.need = Math.max(0, want.need - free)
        }
        if (want.need === 0) byWorker.delete(worker)
      }
      if (!byWorker.size) wants.delete(fn)
    }
    const demanded = new Set<string>()
    for (const [worker, want] of wants.get(fn) ?? []) {
      let isAnswered = true
      for (const id of want.ids) {
        const s = byId?.get(id)
        if (!s) continue
        demanded.add(id)
        for (const [holder, n] of s.held) {
          if (holder === worker || n === 0) continue
          const answered = s.recalled.get(holder)
          if (answered === undefined) {
            s.recalled.set(holder, false)
            out.push({ worker: holder, message: { t: 'recall', fn, id } })
          }
          if (answered !== true) isAnswered = false
        }
      }
      if (isAnswered && !want.isShortSent) {
        want.isShortSent = true
        out.push({ worker, message: { t: 'short', fn } })
      }
    }
    // Recalls of instances nobody waits for any more end: their holders keep what they hold.
    for (const [id, s] of byId ?? []) {
      if (!demanded.has(id) && s.recalled.size) {
        for (const holder of s.recalled.keys()) out.push({ worker: holder, message: { t: 'settle', fn, id } })
        s.recalled.clear()
      }
      if (!sum(s.held) && !s.recalled.size) byId?.delete(id)
    }
    if (byId && !byId.size) fns.delete(fn)
  }

  const giveBack = (worker: number, fn: string, id: string, n: number) => {
    const s = fns.get(fn)?.get(id)
    if (!s) return
    const left = (s.held.get(worker) ?? 0) - n
    if (left > 0) s.held.set(worker, left)
    else s.held.delete(worker)
  }

  return {
    receive(worker, m) {
      const out: Outgoing[] = []
      if (m.t === 'want') {
        let byWorker = wants.get(m.fn)
        if (m.need <= 0) byWorker?.delete(worker)
        else {
          for (const id of m.ids) slotsOf(m.fn, id, m.concurrency)
          if (!byWorker) wants.set(m.fn, (byWorker = new Map<number, Want>()))
          // A new demand goes to the back of the queue; an updated one keeps its place.
          const prev = byWorker.get(worker)
          const isSame = prev && prev.need === m.need && prev.ids.join() === m.ids.join()
          byWorker.set(worker, { need: m.need, ids: m.ids, isShortSent: isSame ? prev.isShortSent : false })
        }
      } else {
        giveBack(worker, m.fn, m.id, m.n)
        const s = fns.get(m.fn)?.get(m.id)
        if (m.t === 'recalled' && s?.recalled.has(worker)) s.recalled.set(worker, true)
      }
      serve(m.fn, out)
      return out
    },

    workerGone(worker) {
      const out: Outgoing[] = []
      for (const byWorker of wants.values()) byWorker.delete(worker)
      for (const [fn, byId] of [...fns]) {
        for (const s of byId.values()) {
          s.held.delete(worker)
          s.recalled.delete(worker)
        }
        serve(fn, out)
      }
      return out.filter((o) => o.worker !== worker)
    },

    setWorkers(count) {
      workers = Math.max(1, count)
    },

    held() {
      const out = new Map<string, Map<number, number>>()
      for (const [fn, byId] of fns)
        for (const [id, s] of byId) if (s.held.size) out.set(`${fn}/${id}`, new Map(s.held))
      return out
    },
  }
}
