/**
 * BullMQ adapter for the invocation store: one queue per function (`async-<fn>`) under a
 * hash-tagged key prefix (`{initless}`: every key in one Redis Cluster slot, as BullMQ needs on a
 * cluster), a job per invocation whose id is the invocation id. BullMQ's own states carry ours:
 * wait/delayed = queued, active = running, completed = succeeded or failed (the function's final
 * answer), failed = dead. Attempts are the job's log rows. The worker side is bullmq-workers.ts.
 */
import { Queue, type ConnectionOptions, type Job, type JobState, type JobType } from 'bullmq'
import type { Logger } from 'pino'
import { errorMessage, InitlessError } from '../../shared/errors.ts'
import type { Manifest } from '../../shared/manifest.ts'
import {
  functionOfId,
  invocationQueueName,
  readLog,
  type FinishedInvocation,
  type InvocationData,
  type InvocationState,
  type InvocationView,
} from './invocation.ts'

export interface AsyncQueueStats {
  readonly fn: string
  /** Waiting for their first attempt or between attempts. */
  readonly queued: number
  readonly running: number
  readonly dead: number
  /** Epoch ms of the oldest invocation waiting to run, if any. */
  readonly oldestQueuedAt?: number
}

export type PurgeState = 'dead' | 'finished' | 'queued'

/** The store's port, as the routes use it. */
export interface InvocationStore {
  /**
   * Store an invocation; resolves once Redis acknowledged it. An id already stored (a repeated
   * Idempotency-Key) resolves with `isDuplicate`, or throws ERR_ASYNC_IDEMPOTENCY_CONFLICT when
   * the request differs. ERR_ASYNC_QUEUE_FULL past async.queueLimit, ERR_ASYNC_UNAVAILABLE when
   * Redis does not answer in time.
   */
  accept(data: InvocationData, manifest: Manifest): Promise<{ readonly isDuplicate: boolean }>
  get(id: string): Promise<InvocationView | undefined>
  list(filter: { fn: string; state?: InvocationState; limit: number }): Promise<InvocationView[]>
  /** Put dead invocations back in the queue with a fresh retry budget. Returns their ids. */
  redrive(target: { readonly fn: string } | { readonly id: string }): Promise<string[]>
  /** Remove a function's invocations in a state; returns how many. */
  purge(fn: string, state: PurgeState): Promise<number>
  stats(fn: string): Promise<AsyncQueueStats>
}

export interface BullmqInvocationsDeps {
  readonly redisUrl: string
  /** BullMQ key prefix, hash-tagged: `{initless}`. */
  readonly prefix: string
  readonly logger: Logger
  /** A call not acknowledged by Redis within this fails with ERR_ASYNC_UNAVAILABLE, in ms. */
  readonly timeoutMs: number
  /** How long dead invocations are kept, in ms. */
  readonly deadTtlMs: number
  readonly retryAfterMs: number
  readonly now?: () => number
}

export interface BullmqInvocations extends InvocationStore {
  /** The producer queue of a function (created on first use). */
  queue(fn: string): Queue<InvocationData, FinishedInvocation>
  close(): Promise<void>
}

/** BullMQ's states as ours (completed needs the return value to tell succeeded from failed). */
export function stateOf(state: JobState | 'unknown', finished?: FinishedInvocation | null): InvocationState {
  if (state === 'active') return 'running'
  if (state === 'failed') return 'dead'
  if (state === 'completed') return finished?.outcome ?? 'succeeded'
  return 'queued'
}

const TYPES_OF: Record<InvocationState, readonly JobType[]> = {
  queued: ['wait', 'prioritized', 'delayed', 'paused', 'waiting-children'],
  running: ['active'],
  succeeded: ['completed'],
  failed: ['completed'],
  dead: ['failed'],
}

/** Connection settings of every async queue: back within 2 s after a Redis restart. */
export function asyncConnection(url: string, extra: Record<string, unknown> = {}): ConnectionOptions {
  return { url, retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 6), 2000), ...extra }
}

export function createBullmqInvocations(deps: BullmqInvocationsDeps): BullmqInvocations {
  const log = deps.logger.child({ module: 'async-queue' })
  const now = deps.now ?? Date.now
  const queues = new Map<string, Queue<InvocationData, FinishedInvocation>>()
  // No offline queue: while Redis is down a call fails at once instead of being sent later, after
  // the caller was already told 503 (it would run an invocation nobody was given an id for).
  const connection = asyncConnection(deps.redisUrl, { enableOfflineQueue: false })

  const queue = (fn: string) => {
    let q = queues.get(fn)
    if (!q) {
      q = new Queue<InvocationData, FinishedInvocation>(invocationQueueName(fn), {
        connection,
        prefix: deps.prefix,
      })
      q.on('error', (err) => log.debug({ fn, err: err.message }, 'async queue connection error'))
      queues.set(fn, q)
    }
    return q
  }

  const unavailable = (err: unknown) =>
    new InitlessError('ERR_ASYNC_UNAVAILABLE', `the invocation queue did not answer (${errorMessage(err)})`, {
      cause: err,
      details: { retryAfterS: Math.ceil(deps.retryAfterMs / 1000) },
    })

  /** Run a Redis call within the deadline; any failure is ERR_ASYNC_UNAVAILABLE. */
  const bounded = async <T>(call: () => Promise<T>): Promise<T> => {
    let timer: NodeJS.Timeout | undefined
    try {
      return await Promise.race([
        call(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${deps.timeoutMs} ms`)), deps.timeoutMs)
        }),
      ])
    } catch (err) {
      if (err instanceof InitlessError) throw err
      throw unavailable(err)
    } finally {
      clearTimeout(timer)
    }
  }

  const viewOf = async (
    read: Job<InvocationData, FinishedInvocation>,
    state?: JobState | 'unknown',
  ): Promise<InvocationView> => {
    const q = queue(read.data.fn)
    const current = state ?? (await read.getState())
    // A job read before it completed has no return value yet, while its state, read after, says
    // completed. Completion is final: one re-read makes the state and the result agree.
    const job =
      current === 'completed' && read.returnvalue == null ? ((await q.getJob(read.id ?? '')) ?? read) : read
    const logs = await q.getJobLogs(job.id ?? '', 0, -1, true)
    const { attempts, callback } = readLog(logs.logs)
    const finished = job.returnvalue as FinishedInvocation | null | undefined
    const d = job.data
    return {
      id: d.id,
      fn: d.fn,
      state: stateOf(current, finished),
      method: d.request.method,
      path: d.request.path,
      acceptedAt: d.acceptedAt,
      ...(job.finishedOn ? { finishedAt: job.finishedOn } : {}),
      attempts,
      ...(finished?.result ? { result: finished.result } : {}),
      ...(d.callbackUrl ? { callback: { url: d.callbackUrl, ...callback } } : {}),
      ...(d.idempotencyKey === undefined ? {} : { idempotencyKey: d.idempotencyKey }),
    }
  }

  const getJob = async (id: string) => {
    const fn = functionOfId(id)
    if (!fn) return undefined
    const job = await queue(fn).getJob(id)
    return job ?? undefined
  }

  return {
    queue,

    async accept(data, manifest) {
      const q = queue(data.fn)
      return bounded(async () => {
        if (data.idempotencyKey !== undefined) {
          const existing = await q.getJob(data.id)
          if (existing) {
            if (existing.data.requestHash !== data.requestHash)
              throw new InitlessError(
                'ERR_ASYNC_IDEMPOTENCY_CONFLICT',
                `Idempotency-Key already used for another request to ${data.fn} (invocation ${data.id})`,
                { details: { invocationId: data.id } },
              )
            return { isDuplicate: true }
          }
        }
        const waiting = await q.getJobCountByTypes('wait', 'prioritized', 'delayed', 'paused')
        if (waiting >= manifest.async.queueLimit)
          throw new InitlessError(
            'ERR_ASYNC_QUEUE_FULL',
            `${data.fn} has ${waiting} invocations waiting (async.queueLimit ${manifest.async.queueLimit})`,
            { details: { retryAfterS: Math.ceil(deps.retryAfterMs / 1000) } },
          )
        await q.add('invoke', data, {
          jobId: data.id,
          attempts: manifest.async.retries + 1,
          backoff: { type: 'exponential', delay: manifest.async.backoff, jitter: 0.5 },
          // BullMQ's ages are in seconds.
          removeOnComplete: { age: Math.ceil(manifest.async.resultTTL / 1000) },
          removeOnFail: { age: Math.ceil(deps.deadTtlMs / 1000) },
        })
        return { isDuplicate: false }
      })
    },

    async get(id) {
      return bounded(async () => {
        const job = await getJob(id)
        return job && viewOf(job)
      })
    },

    async list({ fn, state, limit }) {
      return bounded(async () => {
        const types = state
          ? TYPES_OF[state]
          : (['active', 'wait', 'prioritized', 'delayed', 'completed', 'failed'] as const)
        const jobs = await queue(fn).getJobs([...types], 0, Math.max(0, limit - 1), false)
        const views = await Promise.all(
          jobs
            .filter((j): j is Job<InvocationData, FinishedInvocation> => Boolean(j?.data))
            .map((j) => viewOf(j)),
        )
        return views.filter((v) => state === undefined || v.state === state).slice(0, limit)
      })
    },

    async redrive(target) {
      return bounded(async () => {
        const jobs =
          'id' in target ? [await getJob(target.id)] : await queue(target.fn).getJobs(['failed'], 0, -1, true)
        const done: string[] = []
        for (const job of jobs) {
          if (!job?.id) continue
          if ('id' in target && (await job.getState()) !== 'failed')
            throw new InitlessError(
              'ERR_GATEWAY_BAD_REQUEST',
              `invocation ${job.id} is not dead: only dead ones are redriven`,
            )
          await job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true })
          done.push(job.id)
        }
        if ('id' in target && !done.length)
          throw new InitlessError('ERR_INVOCATION_NOT_FOUND', `no invocation ${target.id}`)
        log.info({ target, count: done.length }, 'invocations redriven')
        return done
      })
    },

    async purge(fn, state) {
      return bounded(async () => {
        const q = queue(fn)
        if (state === 'queued') {
          const before = await q.getJobCountByTypes('wait', 'prioritized', 'delayed', 'paused')
          await q.drain(true)
          return before
        }
        const removed = await q.clean(0, 0, state === 'dead' ? 'failed' : 'completed')
        log.info({ fn, state, count: removed.length }, 'invocations purged')
        return removed.length
      })
    },

    async stats(fn) {
      const q = queue(fn)
      const [counts, oldest] = await Promise.all([
        q.getJobCounts('wait', 'prioritized', 'delayed', 'paused', 'active', 'failed'),
        q.getJobs(['wait', 'prioritized'], 0, 0, true),
      ])
      const n = (k: string) => counts[k] ?? 0
      const first = Math.min(...oldest.map((j) => j.timestamp))
      return {
        fn,
        queued: n('wait') + n('prioritized') + n('delayed') + n('paused'),
        running: n('active'),
        dead: n('failed'),
        ...(Number.isFinite(first) ? { oldestQueuedAt: Math.min(first, now()) } : {}),
      }
    },

    async close() {
      const results = await Promise.allSettled([...queues.values()].map((q) => q.close()))
      for (const r of results)
        if (r.status === 'rejected') log.warn({ err: String(r.reason) }, 'close failed')
    },
  }
}
