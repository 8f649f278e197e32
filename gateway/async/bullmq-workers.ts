/**
 * The worker role: a BullMQ Worker per function queue, running each invocation's attempts through
 * `runAttempt` (the gateway's instance pool), plus the callback queue's worker. Retries are
 * BullMQ's (attempts + exponential backoff with jitter); an invocation whose last attempt failed
 * stays in BullMQ's failed set: dead, with its request and attempt log.
 *
 * A gateway killed mid-invocation loses its job locks; another worker's stalled-job check hands
 * the job back within `lockMs + stalledIntervalMs` and it runs again (at-least-once: the function
 * may see an X-Invocation-Id twice). A job handed back more than `maxStalled` times ends dead.
 */
import { Job, Queue, UnrecoverableError, Worker, type WorkerOptions } from 'bullmq'
import type { Logger } from 'pino'
import { errorMessage } from '../../shared/errors.ts'
import type { Manifest } from '../../shared/manifest.ts'
import type { RunAttempt } from './attempt.ts'
import { asyncConnection, type BullmqInvocations } from './bullmq-invocations.ts'
import {
  CALLBACK_QUEUE,
  invocationQueueName,
  readLog,
  type CallbackPayload,
  type FinishedInvocation,
  type InvocationData,
  type InvocationResult,
  type LogEntry,
  nextStep,
} from './invocation.ts'

export interface WorkerEvents {
  attempt(fn: string, next: 'retry' | 'succeeded' | 'failed' | 'dead'): void
  callbackFailed(fn: string): void
}

export interface CallbackJobData {
  readonly fn: string
  readonly url: string
  readonly payload: CallbackPayload
}

export interface AsyncWorkersDeps {
  readonly redisUrl: string
  readonly prefix: string
  readonly logger: Logger
  readonly invocations: BullmqInvocations
  readonly functions: readonly Manifest[]
  readonly runAttempt: RunAttempt
  readonly sendCallback: (url: string, payload: CallbackPayload) => Promise<void>
  readonly events: WorkerEvents
  /** Job lock, renewed every half of it while the attempt runs, in ms. */
  readonly lockMs: number
  /** How often workers look for jobs whose lock expired, in ms. */
  readonly stalledIntervalMs: number
  /** Hand-backs after which a job ends dead instead. */
  readonly maxStalled: number
  readonly callbackRetries: number
  readonly callbackBackoffMs: number
  /** How long finished callback jobs are kept, in ms. */
  readonly callbackTtlMs: number
  readonly now?: () => number
}

export interface AsyncWorkers {
  /**
   * Consume the queue of a function deployed while this gateway runs (function registry), or take
   * a changed `async.concurrency` of one it consumes.
   */
  follow(manifest: Manifest): void
  /** Stop consuming a deleted function's queue (its running attempts finish). */
  forget(fn: string): void
  /** Stop taking jobs and wait for the running ones; `force`: stop at once (their locks lapse). */
  close(force?: boolean): Promise<void>
}

type InvocationJob = Job<InvocationData, FinishedInvocation>

/** What the pieces of the worker role share. */
interface WorkerCtx {
  readonly deps: AsyncWorkersDeps
  readonly log: Logger
  readonly now: () => number
}

/**
 * Run one attempt of an invocation job: its attempt log, the outcome BullMQ acts on (a throw is a
 * retry or the end), and the callback of a finished invocation.
 */
function createJobRunner(ctx: WorkerCtx, callbacks: Queue<CallbackJobData>) {
  const { deps, log, now } = ctx
  const appendLog = (job: InvocationJob, entry: LogEntry) => job.log(JSON.stringify(entry))

  /** The finished invocation as its callback carries it (the log read back, with this end). */
  const payloadOf = async (
    job: InvocationJob,
    state: 'succeeded' | 'failed' | 'dead',
    result: InvocationResult | undefined,
  ): Promise<CallbackPayload> => {
    const d = job.data
    const logs = await deps.invocations.queue(d.fn).getJobLogs(job.id ?? d.id, 0, -1, true)
    return {
      id: d.id,
      fn: d.fn,
      state,
      method: d.request.method,
      path: d.request.path,
      acceptedAt: d.acceptedAt,
      finishedAt: now(),
      attempts: readLog(logs.logs).attempts,
      ...(result ? { result } : {}),
      ...(d.idempotencyKey === undefined ? {} : { idempotencyKey: d.idempotencyKey }),
    }
  }

  const runJob = async (job: InvocationJob): Promise<FinishedInvocation> => {
    const d = job.data
    const attempt = job.attemptsMade + 1
    await appendLog(job, { e: 'start', at: now(), attempt })
    const outcome = await deps.runAttempt(d, attempt)
    const isLast = attempt >= (job.opts.attempts ?? 1)
    const next = nextStep(outcome, isLast)
    const result = outcome.kind === 'response' ? outcome.result : undefined
    await appendLog(job, {
      e: 'end',
      at: now(),
      next,
      ...(outcome.sentAt === undefined ? {} : { sentAt: outcome.sentAt }),
      ...(result ? { status: result.status } : {}),
      ...(outcome.kind === 'error' ? { code: outcome.code, error: outcome.message } : {}),
    })
    deps.events.attempt(d.fn, next)
    log.debug({ fn: d.fn, invocationId: d.id, attempt, status: result?.status, next }, 'attempt finished')
    // The callback is queued before the invocation is marked finished: a crash in between runs the
    // last attempt again and may send the callback twice, never not at all.
    if (next !== 'retry' && d.callbackUrl) {
      const payload = await payloadOf(job, next, result)
      await callbacks.add(
        'callback',
        { fn: d.fn, url: d.callbackUrl, payload },
        {
          attempts: deps.callbackRetries + 1,
          backoff: { type: 'exponential', delay: deps.callbackBackoffMs, jitter: 0.5 },
          removeOnComplete: { age: Math.ceil(deps.callbackTtlMs / 1000) },
          removeOnFail: { age: Math.ceil(deps.callbackTtlMs / 1000) },
        },
      )
    }
    if ((next === 'succeeded' || next === 'failed') && result) return { outcome: next, result }
    const reason =
      outcome.kind === 'response'
        ? `the function answered ${outcome.result.status}`
        : `${outcome.code}: ${outcome.message}`
    // Not retryable (a deleted function): BullMQ skips the remaining attempts.
    if (next === 'dead' && !isLast) throw new UnrecoverableError(reason)
    throw new Error(reason)
  }
  return runJob
}

/** The callback queue's worker: delivers, and records each delivery in the invocation's log. */
function startCallbackWorker(ctx: WorkerCtx, settings: WorkerOptions): Worker<CallbackJobData> {
  const { deps, log, now } = ctx
  const addInvocationLog = (fn: string, id: string, entry: LogEntry) =>
    Job.addJobLog(deps.invocations.queue(fn), id, JSON.stringify(entry)).catch((err: unknown) =>
      log.debug({ fn, invocationId: id, err: errorMessage(err) }, 'callback state not recorded'),
    )

  const callbackWorker = new Worker<CallbackJobData>(
    CALLBACK_QUEUE,
    async (job) => deps.sendCallback(job.data.url, job.data.payload),
    { ...settings, concurrency: 16 },
  )
  callbackWorker.on('error', (err) => log.debug({ err: err.message }, 'callback worker connection error'))
  callbackWorker.on('completed', (job) => {
    log.debug({ invocationId: job.data.payload.id }, 'callback delivered')
    void addInvocationLog(job.data.fn, job.data.payload.id, { e: 'callback', at: now(), isDelivered: true })
  })
  callbackWorker.on('failed', (job, err) => {
    if (!job) return
    const isFinal = job.attemptsMade >= (job.opts.attempts ?? 1)
    log.info(
      { invocationId: job.data.payload.id, attempt: job.attemptsMade, isFinal, err: err.message },
      'callback failed',
    )
    if (!isFinal) return
    deps.events.callbackFailed(job.data.fn)
    void addInvocationLog(job.data.fn, job.data.payload.id, {
      e: 'callback',
      at: now(),
      isDelivered: false,
      error: err.message,
    })
  })
  return callbackWorker
}

/** Start consuming every function's queue and the callback queue. */
export function startAsyncWorkers(deps: AsyncWorkersDeps): AsyncWorkers {
  const log = deps.logger.child({ module: 'async-worker' })
  const ctx: WorkerCtx = { deps, log, now: deps.now ?? Date.now }
  const connection = asyncConnection(deps.redisUrl)
  const callbacks = new Queue<CallbackJobData>(CALLBACK_QUEUE, {
    connection: asyncConnection(deps.redisUrl, { enableOfflineQueue: false }),
    prefix: deps.prefix,
  })
  callbacks.on('error', (err) => log.debug({ err: err.message }, 'callback queue connection error'))
  const settings: WorkerOptions = {
    connection,
    prefix: deps.prefix,
    lockDuration: deps.lockMs,
    stalledInterval: deps.stalledIntervalMs,
    maxStalledCount: deps.maxStalled,
  }

  const runJob = createJobRunner(ctx, callbacks)

  const workers = new Map<string, Worker<InvocationData, FinishedInvocation>>()
  /**
   * async.concurrency caps a function's running attempts across every gateway: BullMQ's global
   * concurrency (kept in the queue, checked by the script that hands a job to a worker) is the
   * cluster-wide cap, each worker's own concurrency the local one. Idempotent, so every gateway
   * sets it whenever it sees the manifest.
   */
  const capGlobally = (m: Manifest) =>
    void deps.invocations
      .queue(m.name)
      .setGlobalConcurrency(m.async.concurrency)
      .catch((err: unknown) =>
        log.warn({ fn: m.name, err: errorMessage(err) }, 'async.concurrency not set on the queue'),
      )
  const follow = (m: Manifest) => {
    capGlobally(m)
    const existing = workers.get(m.name)
    if (existing) {
      // async.concurrency is a live field: a deploy may change it on a running function.
      existing.concurrency = m.async.concurrency
      return
    }
    const w = new Worker<InvocationData, FinishedInvocation>(invocationQueueName(m.name), runJob, {
      ...settings,
      concurrency: m.async.concurrency,
    })
    w.on('error', (err) => log.debug({ fn: m.name, err: err.message }, 'async worker connection error'))
    w.on('failed', (job, err) => {
      if (job && job.finishedOn)
        log.warn({ fn: m.name, invocationId: job.id, reason: err.message }, 'invocation dead')
    })
    workers.set(m.name, w)
  }
  for (const m of deps.functions) follow(m)

  const callbackWorker = startCallbackWorker(ctx, settings)

  let closing: Promise<void> | undefined
  return {
    follow,
    forget(fn) {
      const w = workers.get(fn)
      workers.delete(fn)
      void w?.close().catch((err: unknown) => log.warn({ fn, err: errorMessage(err) }, 'worker close failed'))
    },
    close(force = false) {
      if (force)
        return Promise.allSettled([...workers.values(), callbackWorker].map((w) => w.close(true))).then(
          () => undefined,
        )
      closing ??= Promise.allSettled([...workers.values(), callbackWorker].map((w) => w.close())).then(
        async (results) => {
          for (const r of results)
            if (r.status === 'rejected') log.warn({ err: String(r.reason) }, 'worker close failed')
          await callbacks.close().catch(() => undefined)
        },
      )
      return closing
    },
  }
}
