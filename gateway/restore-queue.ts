/**
 * The restore queue as the gateway sees it: enqueue a restore for a reserved instance id, and
 * hear how restores ended. Readiness itself comes from the registry (see instance-pool.ts); the
 * queue is only asked about failures, which the registry cannot express.
 */
import type { RestoreJobData } from '../shared/contracts.ts'
import { ERRORS, InitlessError, type ErrorCode } from '../shared/errors.ts'

export type RestoreOutcome =
  | { readonly instanceId: string; readonly ok: true }
  | { readonly instanceId: string; readonly ok: false; readonly reason: string }

export interface RestoreQueue {
  /** Job id = data.instanceId. Rejects when the queue cannot take the job (Redis down, timeout). */
  enqueue(data: RestoreJobData): Promise<void>
  /** Terminal outcomes of restore jobs (any producer's). Returns an unsubscribe function. */
  onOutcome(listener: (outcome: RestoreOutcome) => void): () => void
}

const CODE_RE = /^(ERR_[A-Z0-9_]+)\b[:\s]*/

/**
 * Turn a failed job's reason into our error. An executor that starts its message with a
 * catalogued code (`ERR_SNAPSHOT_NOT_FOUND: no snapshot for hello`) keeps that code's status and
 * retryability; anything else is a retryable ERR_RESTORE_FAILED.
 */
export function restoreFailure(fn: string, instanceId: string, reason: string): InitlessError {
  const m = CODE_RE.exec(reason)
  const known =
    m?.[1] !== undefined && m[1] in ERRORS ? { code: m[1] as ErrorCode, length: m[0].length } : undefined
  const code = known?.code ?? 'ERR_RESTORE_FAILED'
  const text = known ? reason.slice(known.length) : reason
  return new InitlessError(code, `restore of ${fn} failed: ${text || 'no reason given'}`, {
    details: { fn, instanceId },
  })
}
