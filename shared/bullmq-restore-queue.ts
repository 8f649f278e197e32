/**
 * BullMQ adapter for the RestoreQueue port: the producers' only file that imports bullmq (the
 * executor's consumer is executor/instances/worker.ts).
 * Producer connection fails fast while Redis is down (enableOfflineQueue false) so a cold request
 * is answered 503 instead of hanging; QueueEvents reads the events stream and needs
 * maxRetriesPerRequest null (BullMQ forces it for blocking connections).
 */
import { Queue, QueueEvents, type ConnectionOptions } from 'bullmq'
import type { Logger } from 'pino'
import {
  decodeRestoreFailure,
  RESTORE_QUEUE,
  type RestoreJobData,
  type RestoreJobResult,
} from './contracts.ts'
import type { RestoreOutcome, RestoreQueue } from './restore-queue.ts'

export interface BullmqRestoreQueueDeps {
  readonly redisUrl: string
  readonly logger: Logger
  /** Queue name; tests use a unique one. Default RESTORE_QUEUE. */
  readonly queueName?: string
  /** BullMQ key prefix. Default 'bull'. */
  readonly prefix?: string
  /** An enqueue that has not been acknowledged after this long fails, in ms. Default 2000. */
  readonly enqueueTimeoutMs?: number
}

export interface BullmqRestoreQueue extends RestoreQueue {
  /** Resolves once both connections are up. */
  ready(): Promise<void>
  close(): Promise<void>
}

/** Create the producer side of the restore queue plus the events reader. */
export function createBullmqRestoreQueue(deps: BullmqRestoreQueueDeps): BullmqRestoreQueue {
  const log = deps.logger.child({ module: 'restore-queue' })
  const name = deps.queueName ?? RESTORE_QUEUE
  const timeoutMs = deps.enqueueTimeoutMs ?? 2000
  const base = {
    url: deps.redisUrl,
    // BullMQ's default backs off up to 20 s; after a Redis restart we want to be back within 2 s.
    retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 6), 2000),
  }
  const producer: ConnectionOptions = { ...base, enableOfflineQueue: false }
  const prefix = deps.prefix === undefined ? {} : { prefix: deps.prefix }
  const queue = new Queue<RestoreJobData>(name, { connection: producer, ...prefix })
  const events = new QueueEvents(name, { connection: { ...base }, ...prefix })
  const listeners = new Set<(o: RestoreOutcome) => void>()
  const emit = (o: RestoreOutcome) => {
    for (const l of listeners) l(o)
  }

  // Without 'error' listeners an emitter error (every failed reconnect) would crash the process.
  let isQueueDown = false
  queue.on('error', (err) => {
    if (!isQueueDown) log.warn({ err: err.message }, 'restore queue connection error')
    isQueueDown = true
  })
  events.on('error', (err) => log.debug({ err: err.message }, 'queue events connection error'))
  // BullMQ's QueueEvents parses the return value it declares as a string.
  events.on('completed', ({ jobId, returnvalue }) =>
    emit({ instanceId: jobId, ok: true, result: returnvalue as unknown as RestoreJobResult }),
  )
  events.on('failed', ({ jobId, failedReason }) =>
    emit({ instanceId: jobId, ok: false, failure: decodeRestoreFailure(failedReason) }),
  )

  let closing: Promise<void> | undefined
  return {
    async enqueue(data) {
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`enqueue not acknowledged within ${timeoutMs} ms`)),
          timeoutMs,
        )
      })
      try {
        await Promise.race([
          queue.add('restore', data, {
            jobId: data.instanceId,
            // One attempt: a failed restore is retried by the gateway on a new instance id, so the
            // waiting requests are not held behind BullMQ's backoff.
            attempts: 1,
            removeOnComplete: { age: 3600, count: 1000 },
            removeOnFail: { age: 24 * 3600, count: 5000 },
          }),
          timeout,
        ])
        isQueueDown = false
      } finally {
        clearTimeout(timer)
      }
    },
    onOutcome(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    async ready() {
      await Promise.all([queue.waitUntilReady(), events.waitUntilReady()])
    },
    close() {
      closing ??= Promise.allSettled([queue.close(), events.close()]).then((results) => {
        listeners.clear()
        for (const r of results)
          if (r.status === 'rejected') log.warn({ err: String(r.reason) }, 'close failed')
      })
      return closing
    },
  }
}
