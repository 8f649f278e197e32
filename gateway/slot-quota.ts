/**
 * The SlotQuota port: how many of an instance's `scaling.concurrency` slots this gateway process may
 * fill. A gateway that runs alone may fill all of them (no quota given to the pool); the workers of
 * a multi-process gateway hold the slots the primary granted them (cluster/worker-slots.ts).
 */
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
   * Whether the slots this process cannot get are known to be in use, so its scaling rule may
   * start instances for the waiters (otherwise slots idle elsewhere are still being recalled).
   */
  isShort(fn: string): boolean
  /** Give back the slots of instances this process no longer routes to (`isGone`) once idle. */
  prune(fn: string, isGone: (id: string) => boolean): void
  /**
   * Connect the pool: `inflight` reads its count on an instance, `onChange` runs when slots arrived
   * or a shortage is known (dispatch and scale again).
   */
  attach(inflight: (fn: string, id: string) => number, onChange: (fn: string) => void): void
}
