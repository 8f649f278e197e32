/**
 * The restore queue as producers see it (the gateway, the CLI, tests, benchmarks): enqueue a
 * restore for a reserved instance id, and hear how restores ended. Producers use it through the
 * restore client (restore-client.ts); the BullMQ adapter is bullmq-restore-queue.ts.
 */
import type { RestoreFailure, RestoreJobData, RestoreJobResult } from './contracts.ts'
import { cataloguedCode, InitlessError } from './errors.ts'

export type RestoreOutcome =
  | { readonly instanceId: string; readonly ok: true; readonly result: RestoreJobResult }
  | { readonly instanceId: string; readonly ok: false; readonly failure: RestoreFailure }

export interface RestoreQueue {
  /** Job id = data.instanceId. Rejects when the queue cannot take the job (Redis down, timeout). */
  enqueue(data: RestoreJobData): Promise<void>
  /** Terminal outcomes of restore jobs (any producer's). Returns an unsubscribe function. */
  onOutcome(listener: (outcome: RestoreOutcome) => void): () => void
}

/**
 * A failed restore as our error. A catalogued code keeps its status and retryability; any other
 * is ERR_RESTORE_FAILED (retryable).
 */
export function restoreFailure(fn: string, instanceId: string, failure: RestoreFailure): InitlessError {
  const code = cataloguedCode(failure.code, 'ERR_RESTORE_FAILED')
  return new InitlessError(code, `restore of ${fn} failed: ${failure.message || 'no reason given'}`, {
    details: { fn, instanceId },
  })
}
