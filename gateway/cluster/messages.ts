/** The messages between the gateway's primary and its workers over node:cluster's IPC channel. */
import type { MetricsDump } from '../metrics.ts'
import type { ToPrimary, ToWorker } from './slot-ledger.ts'

export type ToPrimaryMessage =
  | ToPrimary
  /** The worker listens on the port. */
  | { readonly t: 'listening' }
  /** A client asked this worker for /metrics: gather every worker's. */
  | { readonly t: 'metrics?'; readonly req: number }
  | { readonly t: 'metrics-dump'; readonly req: number; readonly dump: MetricsDump }

export type ToWorkerMessage =
  | ToWorker
  | { readonly t: 'metrics-dump?'; readonly req: number }
  /** The answer to the worker's `metrics?` of the same `req`. */
  | { readonly t: 'metrics-text'; readonly req: number; readonly text?: string; readonly error?: string }

/** Whether an IPC message is one of ours (an object with a string `t`). */
export function isClusterMessage(m: unknown): boolean {
  return typeof m === 'object' && m !== null && typeof (m as { t?: unknown }).t === 'string'
}
