/**
 * Asynchronous invocations: what is stored for one (the request as accepted), the record of each
 * attempt, the states a caller sees, ids, and which outcomes are retried. No I/O here.
 */
import { createHash, randomUUID } from 'node:crypto'

/** The states of an invocation, as `GET /invocations/<id>` reports them. */
export const INVOCATION_STATES = ['queued', 'running', 'succeeded', 'failed', 'dead'] as const
export type InvocationState = (typeof INVOCATION_STATES)[number]

/** The request as accepted: everything needed to send it again, on any gateway. */
export interface StoredRequest {
  readonly method: string
  /** Path below `/fn/<name>` (starts with `/`), still percent-encoded, plus `?query` if any. */
  readonly path: string
  /** End-to-end headers (hop-by-hop, Prefer, X-Callback-Url and Idempotency-Key removed). */
  readonly headers: Readonly<Record<string, string>>
  /** The body, base64 (empty for none). */
  readonly body: string
}

/** What the queue keeps for one invocation (the BullMQ job's data). */
export interface InvocationData {
  readonly id: string
  readonly fn: string
  readonly request: StoredRequest
  /** Epoch ms of the 202. */
  readonly acceptedAt: number
  /** The accepting request's X-Request-Id: correlates its logs with the attempts'. */
  readonly requestId: string
  readonly callbackUrl?: string
  readonly idempotencyKey?: string
  /** sha256 of the request: a reused Idempotency-Key with another request is refused. */
  readonly requestHash: string
}

/** The function's answer as kept: status, headers, and the body up to async.maxResult. */
export interface InvocationResult {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  /** The body, base64. */
  readonly body: string
  readonly bodyBytes: number
  readonly isTruncated: boolean
}

/** How one attempt ended. */
export type AttemptOutcome = (
  | { readonly kind: 'response'; readonly result: InvocationResult }
  | { readonly kind: 'error'; readonly code: string; readonly message: string; readonly retryable: boolean }
) & {
  /** Epoch ms the request was sent to an instance (after any wait for one); absent if never. */
  readonly sentAt?: number
}

/** One attempt as recorded (the invocation's attempt log). */
export interface AttemptRecord {
  readonly attempt: number
  readonly startedAt: number
  /** When it was sent to an instance: the wait for one (a cold start) lies before. */
  readonly sentAt?: number
  /** Absent while it runs, or when the gateway running it died (it is then tried again). */
  readonly endedAt?: number
  readonly status?: number
  readonly code?: string
  readonly error?: string
  /** What followed: another attempt, the end, or (absent) nothing yet. */
  readonly next?: 'retry' | 'succeeded' | 'failed' | 'dead'
}

/** An invocation as callers and operators see it. */
export interface InvocationView {
  readonly id: string
  readonly fn: string
  readonly state: InvocationState
  readonly method: string
  readonly path: string
  readonly acceptedAt: number
  readonly finishedAt?: number
  readonly attempts: readonly AttemptRecord[]
  readonly result?: InvocationResult
  readonly callback?: { readonly url: string; readonly deliveredAt?: number; readonly error?: string }
  readonly idempotencyKey?: string
}

/** Invocation ids: `<function>.<token>`. BullMQ job ids may not contain `:`, function names no `.`. */
export function newInvocationId(fn: string, idempotencyKey?: string): string {
  if (idempotencyKey === undefined) return `${fn}.${randomUUID()}`
  const token = createHash('sha256').update(`${fn}\n${idempotencyKey}`).digest('hex').slice(0, 32)
  return `${fn}.k${token}`
}

/** The function an invocation id belongs to; undefined for anything that is not one. */
export function functionOfId(id: string): string | undefined {
  const m = /^([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.([A-Za-z0-9-]{8,64})$/.exec(id)
  return m?.[1]
}

/** What an Idempotency-Key may be: printable ASCII, at most 255 characters. */
export const IDEMPOTENCY_KEY_RE = /^[\x21-\x7e]{1,255}$/

export function requestHash(fn: string, r: StoredRequest): string {
  const headers = Object.keys(r.headers)
    .sort()
    .map((k) => `${k}:${r.headers[k]}`)
  return createHash('sha256')
    .update(JSON.stringify([fn, r.method, r.path, headers, r.body]))
    .digest('hex')
}

/**
 * What follows an attempt. A 2xx/3xx succeeds; 408, 429 and 5xx are retried, as are errors that say
 * so (no instance in time, connection refused or reset, timeout); any other 4xx and non-retryable
 * errors end it. When retries are used up, a retryable outcome ends it dead.
 */
export function nextStep(
  outcome: AttemptOutcome,
  isLastAttempt: boolean,
): 'retry' | 'succeeded' | 'failed' | 'dead' {
  let isRetryable: boolean
  if (outcome.kind === 'response') {
    const { status } = outcome.result
    if (status < 400) return 'succeeded'
    isRetryable = status === 408 || status === 429 || status >= 500
    if (!isRetryable) return 'failed'
  } else {
    isRetryable = outcome.retryable
    if (!isRetryable) return 'dead'
  }
  return isLastAttempt ? 'dead' : 'retry'
}

/** The payload POSTed to an X-Callback-Url: the finished invocation. */
export type CallbackPayload = InvocationView

/** The BullMQ queue of a function's invocations (under the async key prefix, e.g. `{initless}`). */
export const invocationQueueName = (fn: string): string => `async-${fn}`

/** The queue of callbacks to send (its name cannot be a function's: those start with `async-`). */
export const CALLBACK_QUEUE = 'callbacks'

/** A finished invocation as the queue keeps it (the job's return value). */
export interface FinishedInvocation {
  readonly outcome: 'succeeded' | 'failed'
  readonly result: InvocationResult
}

/** One entry of an invocation's attempt log (a BullMQ job log row, JSON). */
export type LogEntry =
  | { readonly e: 'start'; readonly at: number; readonly attempt: number }
  | {
      readonly e: 'end'
      readonly at: number
      readonly next: 'retry' | 'succeeded' | 'failed' | 'dead'
      readonly sentAt?: number
      readonly status?: number
      readonly code?: string
      readonly error?: string
    }
  | { readonly e: 'callback'; readonly at: number; readonly isDelivered: boolean; readonly error?: string }

/** The attempts and callback state an attempt log describes. */
export function readLog(rows: readonly string[]): {
  attempts: AttemptRecord[]
  callback: { deliveredAt?: number; error?: string }
} {
  const attempts: AttemptRecord[] = []
  const callback: { deliveredAt?: number; error?: string } = {}
  for (const row of rows) {
    let entry: LogEntry
    try {
      entry = JSON.parse(row) as LogEntry
    } catch {
      continue
    }
    if (entry.e === 'start') attempts.push({ attempt: attempts.length + 1, startedAt: entry.at })
    else if (entry.e === 'end') {
      const open = attempts.at(-1)
      if (!open || open.endedAt !== undefined) continue
      attempts[attempts.length - 1] = {
        ...open,
        endedAt: entry.at,
        next: entry.next,
        ...(entry.sentAt === undefined ? {} : { sentAt: entry.sentAt }),
        ...(entry.status === undefined ? {} : { status: entry.status }),
        ...(entry.code === undefined ? {} : { code: entry.code }),
        ...(entry.error === undefined ? {} : { error: entry.error }),
      }
    } else if (entry.e === 'callback') {
      if (entry.isDelivered) callback.deliveredAt = entry.at
      else if (entry.error !== undefined) callback.error = entry.error
    }
  }
  return { attempts, callback }
}
