/**
 * The SlotQuota port: how many of an instance's `scaling.concurrency` slots this gateway process may
 * fill. A gateway that runs alone may fill all of them (no quota given to the pool); the workers of
 * a multi-process gateway hold the slots the primary granted them (cluster/worker-slots.ts).
 */
import type { InitlessError } from '../shared/errors.ts'

export interface SlotQuota {
  /** Slots of instance `id` this process holds (it sends at most that many requests at once). */
  held(fn: string, id: string): number
  /**
   * The unmet demand of `fn` after its waiters were handed what this process holds: `need` requests
   * still wait (0: none), `ids` are the ready instances they could go to.
   */
  demand(fn: string, need: number, ids: readonly string[], concurrency: number): void
  /** A request on `id` ended; `inflight` are those left on it in this process. */
  released(fn: string, id: string, inflight: number): void
  /**
   * How many waiting requests, over every process of the gateway, this process's scaling rule is to
   * start instances for: the slots they lack are in use. 0 when none wait, or when another process
   * decides the function's scale-up (one decides, on the summed demand).
   */
  shortfall(fn: string): number
  /** Give back the slots of instances this process no longer routes to (`isGone`) once idle. */
  prune(fn: string, isGone: (id: string) => boolean): void
  /** A start this process made for the shortfall failed: the other processes' waiters count it too. */
  startFailed(fn: string, error: InitlessError): void
  /**
   * Connect the pool: `inflight` reads its count on an instance, `onChange` runs when slots arrived
   * or a shortage is known (dispatch and scale again), `onStartFailed` when another process's start
   * for the function's waiters failed.
   */
  attach(
    inflight: (fn: string, id: string) => number,
    onChange: (fn: string) => void,
    onStartFailed: (fn: string, error: InitlessError) => void,
  ): void
}
