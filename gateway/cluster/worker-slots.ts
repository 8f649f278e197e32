/**
 * A gateway worker's side of the slot ledger (slot-ledger.ts): it holds the slots the primary
 * granted, asks for more while requests wait, and gives slots back when recalled. Invariant: this
 * process never has more requests in flight on an instance than the slots it holds — a slot is
 * given back only while idle, and a grant is counted before it is used.
 */
import { cataloguedCode, InitlessError } from '../../shared/errors.ts'
import type { SlotQuota } from '../slot-quota.ts'
import type { StartFailure, ToPrimary, ToWorker } from './slot-ledger.ts'

export interface SlotChannel {
  send(message: ToPrimary): void
  onMessage(listener: (message: ToWorker) => void): void
}

export function createWorkerSlots(channel: SlotChannel): SlotQuota {
  /** fn -> instance id -> slots held. */
  const held = new Map<string, Map<string, number>>()
  /** `fn/id` recalled: every slot goes back as soon as it is idle, until settled. */
  const returning = new Set<string>()
  /** fn -> slots granted so far (each want says how many it was sent after). */
  const granted = new Map<string, number>()
  /**
   * fn -> the unmet demand last sent (absent: none): its `key` to send only changes, the rest to
   * send it again when the ledger asks to confirm.
   */
  const told = new Map<string, { need: number; ids: readonly string[]; concurrency: number; key: string }>()
  /** fn -> the short demand of all workers, while this process is the function's scaler. */
  const short = new Map<string, number>()
  /** Functions whose next demand goes to the primary even if unchanged: it answers a failed start. */
  const answering = new Set<string>()
  /** Start failures this process reported. */
  let failures = 0
  let inflight: (fn: string, id: string) => number = () => 0
  let onChange: (fn: string) => void = () => undefined
  let onStartFailed: (fn: string, error: InitlessError) => void = () => undefined

  const heldOf = (fn: string, id: string) => held.get(fn)?.get(id) ?? 0
  const setHeld = (fn: string, id: string, n: number) => {
    let byId = held.get(fn)
    if (!byId) held.set(fn, (byId = new Map<string, number>()))
    if (n > 0) byId.set(id, n)
    else byId.delete(id)
    if (!byId.size) held.delete(fn)
  }

  /** Give back every idle slot of `id`: answering recall `seq`, or (without) as they become idle. */
  const giveIdle = (fn: string, id: string, seq?: number) => {
    const n = Math.max(0, heldOf(fn, id) - inflight(fn, id))
    if (n > 0) setHeld(fn, id, heldOf(fn, id) - n)
    if (seq !== undefined) channel.send({ t: 'recalled', fn, id, n, seq })
    else if (n > 0) channel.send({ t: 'give', fn, id, n })
  }

  const want = (fn: string, need: number, ids: readonly string[], concurrency: number, confirm?: number) =>
    channel.send({
      t: 'want',
      fn,
      need,
      ids,
      concurrency,
      granted: granted.get(fn) ?? 0,
      ...(confirm === undefined ? {} : { confirm }),
    })

  channel.onMessage((m) => {
    if (m.t === 'grant') {
      setHeld(m.fn, m.id, heldOf(m.fn, m.id) + m.n)
      granted.set(m.fn, (granted.get(m.fn) ?? 0) + m.n)
      onChange(m.fn)
      // Recalled meanwhile: what the waiters did not take goes back now, not at the next release.
      if (returning.has(`${m.fn}/${m.id}`)) giveIdle(m.fn, m.id)
    } else if (m.t === 'recall') {
      returning.add(`${m.fn}/${m.id}`)
      giveIdle(m.fn, m.id, m.seq)
    } else if (m.t === 'settle') {
      returning.delete(`${m.fn}/${m.id}`)
    } else if (m.t === 'confirm') {
      const d = told.get(m.fn)
      want(m.fn, d?.need ?? 0, d?.ids ?? [], d?.concurrency ?? 0, m.seq)
    } else if (m.t === 'short') {
      if (m.failures < failures) return
      if (m.need > 0) short.set(m.fn, m.need)
      else short.delete(m.fn)
      onChange(m.fn)
    } else if (m.t === 'start-failed') {
      // The scaler waits for every worker's demand after the failure was charged to its waiters.
      short.delete(m.fn)
      answering.add(m.fn)
      onStartFailed(m.fn, fromWire(m.error))
      if (answering.delete(m.fn)) want(m.fn, 0, [], 0)
    }
  })

  return {
    held: heldOf,

    demand(fn, need, ids, concurrency) {
      const key = need > 0 ? `${need} ${granted.get(fn) ?? 0} ${ids.join(',')}` : undefined
      if (!answering.delete(fn) && key === told.get(fn)?.key) return
      // Until the primary answers this demand, the sum it sent before may count it wrongly.
      short.delete(fn)
      if (key === undefined) told.delete(fn)
      else told.set(fn, { need, ids, concurrency, key })
      want(fn, need, ids, concurrency)
    },

    released(fn, id) {
      if (returning.has(`${fn}/${id}`)) giveIdle(fn, id)
    },

    shortfall: (fn) => short.get(fn) ?? 0,

    prune(fn, isGone) {
      for (const id of [...(held.get(fn)?.keys() ?? [])]) {
        if (isGone(id) && inflight(fn, id) === 0) giveIdle(fn, id)
      }
    },

    startFailed(fn, error) {
      // The pool charges its own waiters next and states its demand (answering the failure).
      short.delete(fn)
      answering.add(fn)
      failures++
      channel.send({
        t: 'start-failed',
        fn,
        error: { code: error.code, message: error.message, details: error.details },
      })
    },

    attach(read, changed, failed) {
      inflight = read
      onChange = changed
      onStartFailed = failed
    },
  }
}

/** The failure as the scaler's pool saw it (an unknown code, from a newer process: a failed restore). */
function fromWire(f: StartFailure): InitlessError {
  return new InitlessError(cataloguedCode(f.code, 'ERR_RESTORE_FAILED'), f.message, {
    details: { ...f.details },
  })
}
