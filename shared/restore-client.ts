/**
 * The restore protocol, written once for every producer (the gateway's pool, `initless scale`,
 * tests, benchmarks): reserve an instance id in the registry (bounded by the function's
 * maxInstances), enqueue a restore job with that id as job id, and, when asked, await the job's
 * outcome. The executor's side is executor/instances/worker.ts.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import type { RestoreJobOptions, RestoreJobResult, RestoreReason } from './contracts.ts'
import { InitlessError } from './errors.ts'
import type { InstanceRegistry } from './registry.ts'
import { restoreFailure, type RestoreOutcome, type RestoreQueue } from './restore-queue.ts'

/** The one instance id format: the function's name and 12 random hex digits. */
export function newInstanceId(fn: string): string {
  return `${fn}-${randomBytes(6).toString('hex')}`
}

export interface RestoreRequest {
  readonly fn: string
  /** The function's scaling.maxInstances: no reservation beyond it. */
  readonly maxInstances: number
  readonly reason: RestoreReason
  /** Correlates the producer's logs with the executor's. Default: a new UUID. */
  readonly traceId?: string
  readonly options?: RestoreJobOptions
  /** The id to reserve (made with the client's newInstanceId). Default: a new one. */
  readonly instanceId?: string
  /**
   * Called after the reservation, before the enqueue (the gateway records the restore as its own
   * here, so that an outcome arriving at once is recognised). A throw withdraws the reservation.
   */
  readonly onReserved?: (instanceId: string) => void
}

export interface RestoreClient {
  /** New instance ids, in the client's one format. */
  newInstanceId(fn: string): string
  /**
   * Reserve and enqueue; resolves with the instance id, or undefined when the function is at its
   * maxInstances. When the enqueue fails the reservation is withdrawn and the error passed on.
   */
  start(request: RestoreRequest): Promise<string | undefined>
  /**
   * start(), then wait for the job: the ready instance, or its failure as an InitlessError
   * (ERR_GATEWAY_NO_CAPACITY when the function is full, ERR_GATEWAY_TIMEOUT after `timeoutMs`).
   */
  restore(request: RestoreRequest, timeoutMs: number): Promise<RestoreJobResult>
  /** Terminal outcomes of restore jobs (any producer's). Returns an unsubscribe function. */
  onOutcome(listener: (outcome: RestoreOutcome) => void): () => void
}

export interface RestoreClientDeps {
  readonly registry: Pick<InstanceRegistry, 'reserve' | 'withdraw'>
  readonly queue: RestoreQueue
  readonly now?: () => number
  /** Default newInstanceId (tests pass predictable ids). */
  readonly newInstanceId?: (fn: string) => string
}

export function createRestoreClient(deps: RestoreClientDeps): RestoreClient {
  const { registry, queue } = deps
  const now = deps.now ?? Date.now
  const newId = deps.newInstanceId ?? newInstanceId

  const start = async (req: RestoreRequest): Promise<string | undefined> => {
    const instanceId = req.instanceId ?? newId(req.fn)
    try {
      if (!(await registry.reserve(req.fn, req.maxInstances, instanceId))) return undefined
      req.onReserved?.(instanceId)
      await queue.enqueue({
        fn: req.fn,
        instanceId,
        traceId: req.traceId ?? randomUUID(),
        enqueuedAt: now(),
        reason: req.reason,
        ...req.options,
      })
      return instanceId
    } catch (err) {
      registry.withdraw(req.fn, instanceId).catch(() => undefined)
      throw err
    }
  }

  return {
    newInstanceId: newId,
    start,
    onOutcome: (listener) => queue.onOutcome(listener),
    async restore(req, timeoutMs) {
      const instanceId = req.instanceId ?? newId(req.fn)
      let stop = () => {}
      let timer: NodeJS.Timeout | undefined
      // Listening before the enqueue: the outcome may come before enqueue() returns.
      const outcome = new Promise<RestoreOutcome>((resolve, reject) => {
        stop = queue.onOutcome((o) => o.instanceId === instanceId && resolve(o))
        timer = setTimeout(
          () =>
            reject(
              new InitlessError(
                'ERR_GATEWAY_TIMEOUT',
                `restore of ${req.fn} (${instanceId}) did not end within ${timeoutMs} ms`,
              ),
            ),
          timeoutMs,
        )
      })
      try {
        if (!(await start({ ...req, instanceId })))
          throw new InitlessError(
            'ERR_GATEWAY_NO_CAPACITY',
            `${req.fn} is at its maxInstances (${req.maxInstances})`,
          )
        const o = await outcome
        if (!o.ok) throw restoreFailure(req.fn, instanceId, o.failure)
        return o.result
      } finally {
        stop()
        clearTimeout(timer)
        outcome.catch(() => undefined)
      }
    },
  }
}
