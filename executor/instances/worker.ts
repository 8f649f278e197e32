/**
 * The restore worker: the executor's side of the BullMQ restore queue (the only executor file that
 * imports bullmq). Deterministic failures (unknown function, invalid manifest, a build that fails)
 * become UnrecoverableError so BullMQ does not retry them; transient ones stay retryable.
 *
 * Locks are short (10 s, renewed every 5 s while a restore runs) so that after a `kill -9` of the
 * executor, BullMQ's stalled-job check hands the job to the restarted worker within seconds.
 */
import { UnrecoverableError, Worker, type Job } from 'bullmq'
import type { Logger } from 'pino'
import {
  encodeRestoreFailure,
  RESTORE_QUEUE,
  type RestoreJobData,
  type RestoreJobResult,
} from '../../shared/contracts.ts'
import { errorMessage, isInitlessError } from '../../shared/errors.ts'
import { createRedis } from '../../shared/redis.ts'

export interface RestoreWorker {
  /**
   * Stop taking jobs; waits for running ones (and for Redis) unless `force`, which may follow a
   * graceful close that is taking too long. Idempotent.
   */
  close(force?: boolean): Promise<void>
  readonly running: () => number
}

export interface RestoreWorkerDeps {
  readonly redisUrl: string
  readonly concurrency: number
  readonly start: (job: RestoreJobData) => Promise<RestoreJobResult>
  readonly logger: Logger
  readonly queueName?: string
  /** Called when a job fails for good, so its reservation can be dropped. */
  readonly onFailed?: (job: RestoreJobData, err: Error) => Promise<void>
}

export const LOCK_DURATION_MS = 10_000
export const STALLED_INTERVAL_MS = 5_000

/** Create and start the BullMQ worker consuming restore jobs. */
export function createRestoreWorker(deps: RestoreWorkerDeps): RestoreWorker {
  const log = deps.logger.child({ module: 'worker' })
  let running = 0
  // BullMQ never closes a connection it was handed: close() below disconnects it.
  const connection = createRedis(deps.redisUrl, { blocking: true, name: 'initless-executor-worker' })
  const worker = new Worker<RestoreJobData, RestoreJobResult>(
    deps.queueName ?? RESTORE_QUEUE,
    async (job: Job<RestoreJobData, RestoreJobResult>) => {
      running++
      const jlog = log.child({ fn: job.data.fn, id: job.data.instanceId, traceId: job.data.traceId })
      jlog.debug({ attempt: job.attemptsMade + 1 }, 'restore job started')
      try {
        return await deps.start(job.data)
      } catch (err) {
        jlog.error(
          { err: errorMessage(err), code: isInitlessError(err) ? err.code : undefined },
          'restore job failed',
        )
        // The failure reason carries the typed envelope producers decode (RestoreFailure).
        const failure = isInitlessError(err)
          ? { code: err.code, message: err.message, retryable: err.retryable }
          : { code: 'ERR_RESTORE_FAILED', message: errorMessage(err), retryable: true }
        if (!failure.retryable) throw new UnrecoverableError(encodeRestoreFailure(failure))
        throw new Error(encodeRestoreFailure(failure), { cause: err })
      } finally {
        running--
      }
    },
    {
      connection,
      concurrency: deps.concurrency,
      lockDuration: LOCK_DURATION_MS,
      stalledInterval: STALLED_INTERVAL_MS,
      maxStalledCount: 2,
      autorun: true,
    },
  )
  worker.on('error', (err) => log.warn({ err: err.message }, 'worker connection error'))
  worker.on('failed', (job, err) => {
    if (!job) return
    const final = err instanceof UnrecoverableError || job.attemptsMade >= (job.opts.attempts ?? 1)
    if (final && deps.onFailed) void deps.onFailed(job.data, err).catch(() => undefined)
  })
  let closing: Promise<void> | undefined
  let forced: Promise<void> | undefined
  return {
    close(force = false) {
      if (!force) return (closing ??= worker.close(false).finally(() => connection.disconnect()))
      // Not the graceful close under way: that one waits for running jobs, and for a Redis that
      // may be out of reach (seen: an executor cut off from Redis never stopped). Dropping the
      // connection first fails its pending commands at once.
      forced ??= (() => {
        connection.disconnect()
        return worker.close(true)
      })()
      return forced
    },
    running: () => running,
  }
}
