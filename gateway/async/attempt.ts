/**
 * One attempt of an asynchronous invocation: take a slot on an instance from the same pool as
 * synchronous requests (waiting for a cold start if none is ready), send the stored request, and
 * keep the answer up to async.maxResult. Never throws: every failure becomes an outcome.
 */
import { errorMessage, InitlessError, isInitlessError } from '../../shared/errors.ts'
import type { FunctionCatalog } from '../catalog.ts'
import type { Forwarder } from '../forwarder.ts'
import type { InstancePool } from '../instance-pool.ts'
import type { Lease } from '../pool-state.ts'
import type { AttemptOutcome, InvocationData } from './invocation.ts'

export interface AttemptDeps {
  readonly catalog: Pick<FunctionCatalog, 'get'>
  readonly pool: Pick<InstancePool, 'acquire' | 'tryAcquire'>
  /** A forwarder that sends a fetch Request and returns a Response (web-forwarder.ts). */
  readonly forwarder: Forwarder
  readonly now?: () => number
}

export type RunAttempt = (inv: InvocationData, attempt: number) => Promise<AttemptOutcome>

const NULL_BODY_METHODS = new Set(['GET', 'HEAD'])

export function createAttemptRunner(deps: AttemptDeps): RunAttempt {
  const now = deps.now ?? Date.now
  return async (inv, attempt) => {
    const manifest = deps.catalog.get(inv.fn)
    if (!manifest)
      return {
        kind: 'error',
        code: 'ERR_FUNCTION_NOT_FOUND',
        message: `no function named ${inv.fn}`,
        retryable: false,
      }
    const { request } = inv
    let lease: Lease
    try {
      lease =
        deps.pool.tryAcquire(manifest) ?? (await deps.pool.acquire(manifest, { traceId: inv.requestId }))
    } catch (err) {
      return failure(err)
    }
    const body = Buffer.from(request.body, 'base64')
    const sentAt = now()
    let isDead = false
    try {
      const fetchRequest = new Request(`http://invocation${request.path}`, {
        method: request.method,
        ...(body.length && !NULL_BODY_METHODS.has(request.method) ? { body } : {}),
      })
      const result = await deps.forwarder.forward({
        target: lease.address,
        path: request.path,
        request: fetchRequest,
        // The stored headers go as the forwarder's own: it would drop X-Forwarded-* of a request
        // (set at accept time here), and fetch's Request may drop Content-Length.
        requestHeaders: {
          ...request.headers,
          'x-invocation-id': inv.id,
          'x-invocation-attempt': String(attempt),
          'x-request-id': inv.requestId,
        },
        responseHeaders: () => ({}),
        maxBodyBytes: body.length,
        timeoutMs: manifest.timeouts.request,
      })
      const response = result.response
      if (!response) throw new Error('the forwarder wrote no response')
      const kept = await readLimited(response, manifest.async.maxResult, manifest.timeouts.request)
      const headers: Record<string, string> = {}
      response.headers.forEach((v, k) => (headers[k] = v))
      return {
        kind: 'response',
        sentAt,
        result: {
          status: result.status,
          headers,
          body: kept.body.toString('base64'),
          bodyBytes: kept.bytes,
          isTruncated: kept.isTruncated,
        },
      }
    } catch (err) {
      isDead = isInitlessError(err) && err.details.isRefused === true
      return { ...failure(err), sentAt }
    } finally {
      if (isDead) lease.markDead()
      else lease.release()
    }
  }
}

function failure(err: unknown): AttemptOutcome {
  if (isInitlessError(err))
    return { kind: 'error', code: err.code, message: err.message, retryable: err.retryable }
  // A body that failed mid-way, or anything unexpected: the function may answer the next time.
  return { kind: 'error', code: 'ERR_GATEWAY_UPSTREAM_FAILED', message: errorMessage(err), retryable: true }
}

/** Read up to `max` bytes of the body (counting the rest), within `timeoutMs`. */
async function readLimited(
  response: Response,
  max: number,
  timeoutMs: number,
): Promise<{ body: Buffer; bytes: number; isTruncated: boolean }> {
  if (!response.body) return { body: Buffer.alloc(0), bytes: 0, isTruncated: false }
  const reader = (response.body as ReadableStream<Uint8Array>).getReader()
  let isLate = false
  const timer = setTimeout(() => {
    isLate = true
    void reader.cancel(new Error('response body timed out'))
  }, timeoutMs)
  const chunks: Buffer[] = []
  let kept = 0
  let bytes = 0
  try {
    for (;;) {
      const { done, value } = (await reader.read()) as { done: boolean; value?: Uint8Array }
      if (done || !value) break
      bytes += value.length
      if (kept < max) {
        const part = value.subarray(0, max - kept)
        chunks.push(Buffer.from(part))
        kept += part.length
      }
    }
  } finally {
    clearTimeout(timer)
  }
  if (isLate)
    throw new InitlessError('ERR_GATEWAY_TIMEOUT', `the response body took longer than ${timeoutMs} ms`)
  return { body: Buffer.concat(chunks), bytes, isTruncated: bytes > kept }
}
