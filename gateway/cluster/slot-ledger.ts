/**
 * The primary's ledger of request slots when the gateway runs as several worker processes
 * (INITLESS_GATEWAY_WORKERS > 1). Every slot of an instance (`scaling.concurrency` of them) is held
 * by at most one worker at a time, and a worker sends a request to an instance only on a slot it
 * holds: the function's concurrency stays exact across the workers without a message per request.
 *
 * Workers keep the slots they were granted while they use them. A worker that has requests waiting
 * asks for more (`want`); the ledger grants free slots, and when there are none it recalls the idle
 * ones of the other holders (`recall`): those give back what is idle at once and every further slot
 * as its request ends, until the ledger says the demand is met (`settle`). A worker's demand is
 * short once every holder it recalled has answered and slots are still missing: those in use.
 * Messages cross and lag, and a stale one must not make a demand short that slots meet, which would
 * start an instance for nothing: a want counts the slots granted to the worker so far (`granted`),
 * and what was granted after it was sent (the worker had not seen that yet) is taken off its need;
 * an answer counts only for the recall it names (`seq`), as one that crossed a settle and a newer
 * recall tells what was idle before; and a demand that had to recall other holders is confirmed
 * by its worker before it counts (`confirm`): while the answers came, the worker's own requests
 * may have ended and their slots served its waiters, and its wants saying so may still be queued
 * (the channel keeps order, so its reply comes after them).
 *
 * Scale-up is decided once per function, on the demand of all workers: one worker per function is
 * its scaler (the first that wanted slots, until it exits), and only it hears `short`, carrying
 * the sum of every short demand. Its scaling rule (gateway/scaling.ts) starts instances for that
 * sum against the instances it sees ready and starting, so workers that are short at once never
 * both start for one demand, and a burst split across N workers starts what one process would.
 * `short` is sent again whenever the sum changes (0: nothing to start) and after every change of
 * the scaler's own demand (it drops the sum it heard until then). A worker that exits loses
 * its slots (its connections, and so its requests, died with it); if it was a scaler, the
 * function's next wanting worker becomes the scaler and hears the sum. A start that fails is
 * relayed to the other wanting workers and the scaler (`start-failed`): their waiters count it as
 * a single process's would, and the scaler hears the sum again only once every one of them (the
 * sender too) has told its demand after that, so restores that keep failing end after the same
 * retries as in one process.
 *
 * Pure: the caller delivers the messages returned (primary.ts over node:cluster's IPC).
 */

/** Worker -> primary. `need` is the worker's whole unmet demand for the function (0: none). */
export type ToPrimary =
  | {
      readonly t: 'want'
      readonly fn: string
      readonly need: number
      /** The slots of `fn` granted to this worker so far, as it received them. */
      readonly granted: number
      /** Set when this want answers the ledger's `confirm` of that `seq`. */
      readonly confirm?: number
      /** The function's ready instances and their concurrency. */
      readonly ids: readonly string[]
      readonly concurrency: number
    }
  | { readonly t: 'give'; readonly fn: string; readonly id: string; readonly n: number }
  /** The answer to recall `seq`: `n` slots given back (0: all it holds are in use). */
  | {
      readonly t: 'recalled'
      readonly fn: string
      readonly id: string
      readonly n: number
      readonly seq: number
    }
  /** A start this worker made failed: the other wanting workers charge it to their waiters. */
  | { readonly t: 'start-failed'; readonly fn: string; readonly error: StartFailure }

/** Primary -> worker. */
export type ToWorker =
  | { readonly t: 'grant'; readonly fn: string; readonly id: string; readonly n: number }
  /** Give back the idle slots of `id`, and each further one as it becomes idle, until `settle`. */
  | { readonly t: 'recall'; readonly fn: string; readonly id: string; readonly seq: number }
  | { readonly t: 'settle'; readonly fn: string; readonly id: string }
  /** Send your demand of `fn` now (a `want` with `confirm`), even if unchanged. */
  | { readonly t: 'confirm'; readonly fn: string; readonly seq: number }
  /**
   * To the function's scaler only: `need` requests, summed over all workers, wait with no slot to
   * be had; its scaling rule starts instances for them (0: none wait).
   */
  | {
      readonly t: 'short'
      readonly fn: string
      readonly need: number
      /** The worker's start failures the ledger had seen: an older `short` crossed one, and is void. */
      readonly failures: number
    }
  | { readonly t: 'start-failed'; readonly fn: string; readonly error: StartFailure }

/** A failed start as it crosses the IPC channel (an InitlessError's fields). */
export interface StartFailure {
  readonly code: string
  readonly message: string
  readonly details: Readonly<Record<string, unknown>>
}

export interface Outgoing {
  readonly worker: number
  readonly message: ToWorker
}

interface InstanceSlots {
  concurrency: number
  /** Worker id -> slots it holds. */
  readonly held: Map<number, number>
  /** Holders asked to give back: the recall they were sent and whether they have answered it. */
  readonly recalled: Map<number, { readonly seq: number; isAnswered: boolean }>
}

interface Want {
  need: number
  ids: readonly string[]
  /** The confirm sent and not answered yet. */
  confirm: number | undefined
  /** The worker told this demand after a confirm: it is no older than the recall answers. */
  isConfirmed: boolean
}

interface Scaler {
  /** The worker that decides the function's scale-up. */
  readonly worker: number
  /** The short demand it last heard (-1: it forgot it). */
  sent: number
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
  /** The worker that decides `fn`'s scale-up, once one wanted slots. */
  scaler(fn: string): number | undefined
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
  /** fn -> its scaler. */
  const scalers = new Map<string, Scaler>()
  /** Worker -> start failures it reported. */
  const failuresFrom = new Map<number, number>()
  /** fn -> workers whose demand after a failed start the scaler waits for. */
  const answers = new Map<string, Set<number>>()
  /** The last recall or confirm sent (its `seq`). */
  let seq = 0
  /** fn -> worker -> slots granted to it so far (the count its wants are sent against). */
  const grantedTo = new Map<string, Map<number, number>>()

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
    let byWorker = grantedTo.get(fn)
    if (!byWorker) grantedTo.set(fn, (byWorker = new Map<number, number>()))
    byWorker.set(worker, (byWorker.get(worker) ?? 0) + n)
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
    let short = 0
    for (const [worker, want] of wants.get(fn) ?? []) {
      let isAnswered = true
      let isContended = false
      for (const id of want.ids) {
        const s = byId?.get(id)
        if (!s) continue
        demanded.add(id)
        for (const [holder, n] of s.held) {
          if (holder === worker || n === 0) continue
          isContended = true
          const recall = s.recalled.get(holder)
          if (!recall) {
            s.recalled.set(holder, { seq: ++seq, isAnswered: false })
            out.push({ worker: holder, message: { t: 'recall', fn, id, seq } })
          }
          if (!recall?.isAnswered) isAnswered = false
        }
      }
      if (!isAnswered) continue
      if (!isContended || want.isConfirmed) short += want.need
      else if (want.confirm === undefined) {
        want.confirm = ++seq
        out.push({ worker, message: { t: 'confirm', fn, seq } })
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
    // Free slots left are on instances some short worker does not list yet (it has not seen them
    // ready): its next want takes them, so they are no reason to start more.
    let free = 0
    for (const s of byId?.values() ?? []) free += Math.max(0, s.concurrency - sum(s.held))
    tellScaler(fn, Math.max(0, short - free), out)
  }

  /** Send the function's scaler its short demand when that changed; choose one if there is none. */
  const tellScaler = (fn: string, short: number, out: Outgoing[]) => {
    let scaler = scalers.get(fn)
    if (!scaler) {
      const first = wants.get(fn)?.keys().next()
      if (!first || first.done) return
      scalers.set(fn, (scaler = { worker: first.value, sent: 0 }))
    }
    if (scaler.sent === short) return
    if (answers.get(fn)?.size) return
    answers.delete(fn)
    scaler.sent = short
    const failures = failuresFrom.get(scaler.worker) ?? 0
    out.push({ worker: scaler.worker, message: { t: 'short', fn, need: short, failures } })
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
      if (m.t === 'start-failed') {
        failuresFrom.set(worker, (failuresFrom.get(worker) ?? 0) + 1)
        const scaler = scalers.get(m.fn)
        const told = new Set([...(wants.get(m.fn)?.keys() ?? []), ...(scaler ? [scaler.worker] : [])])
        told.delete(worker)
        for (const w of told)
          out.push({ worker: w, message: { t: 'start-failed', fn: m.fn, error: m.error } })
        // The scaler dropped the sum; it hears it again once every worker told its demand after
        // charging the failure to its waiters (the sender included).
        if (scaler) scaler.sent = -1
        answers.set(m.fn, told.add(worker))
        return out
      }
      if (m.t === 'want') {
        // A confirm's reply may precede the worker's handling of a failed start: not its answer.
        if (m.confirm === undefined) answers.get(m.fn)?.delete(worker)
        let byWorker = wants.get(m.fn)
        // Slots granted after the worker sent this are on their way to its waiters.
        const need = m.need - ((grantedTo.get(m.fn)?.get(worker) ?? 0) - m.granted)
        if (need <= 0) byWorker?.delete(worker)
        else {
          for (const id of m.ids) slotsOf(m.fn, id, m.concurrency)
          if (!byWorker) wants.set(m.fn, (byWorker = new Map<number, Want>()))
          const was = byWorker.get(worker)
          // A new demand goes to the back of the queue; an updated one keeps its place. A reply
          // to a confirm is the worker's demand now, and so is every want it sends after that.
          const isConfirmed = m.confirm !== undefined || (was?.isConfirmed ?? false)
          byWorker.set(worker, {
            need,
            ids: m.ids,
            isConfirmed,
            confirm: isConfirmed ? undefined : was?.confirm,
          })
        }
        // The scaler forgets the short demand when its own changes: it always hears the new one.
        const scaler = scalers.get(m.fn)
        if (scaler?.worker === worker) scaler.sent = -1
      } else {
        giveBack(worker, m.fn, m.id, m.n)
        const s = fns.get(m.fn)?.get(m.id)
        const recall = s?.recalled.get(worker)
        if (m.t === 'recalled' && recall?.seq === m.seq) recall.isAnswered = true
      }
      serve(m.fn, out)
      return out
    },

    workerGone(worker) {
      const out: Outgoing[] = []
      for (const byWorker of wants.values()) byWorker.delete(worker)
      for (const waiting of answers.values()) waiting.delete(worker)
      for (const byWorker of grantedTo.values()) byWorker.delete(worker)
      failuresFrom.delete(worker)
      // Its functions get another scaler (the next wanting worker), which hears the whole demand.
      for (const [fn, scaler] of scalers) if (scaler.worker === worker) scalers.delete(fn)
      for (const fn of new Set([...fns.keys(), ...wants.keys()])) {
        for (const s of fns.get(fn)?.values() ?? []) {
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

    scaler: (fn) => scalers.get(fn)?.worker,

    held() {
      const out = new Map<string, Map<number, number>>()
      for (const [fn, byId] of fns)
        for (const [id, s] of byId) if (s.held.size) out.set(`${fn}/${id}`, new Map(s.held))
      return out
    },
  }
}
