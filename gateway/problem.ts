/**
 * RFC 9457 problem+json answers for the gateway's own errors, rendered in one place (the app's
 * onError and notFound). Unknown errors become ERR_INTERNAL without their message.
 */
import { ERRORS, isInitlessError, type ErrorCode } from '../shared/errors.ts'
import type { RequestLog } from './request-log.ts'

export interface Problem {
  readonly type: string
  readonly title: string
  readonly status: number
  readonly detail: string
  readonly code: ErrorCode
  readonly requestId: string
}

export const PROBLEM_CONTENT_TYPE = 'application/problem+json'

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Render `err` as a problem response, logging it at a level that matches its status. */
export function problemResponse(err: unknown, requestId: string, log: RequestLog): Response {
  const known = isInitlessError(err) ? err : undefined
  const code: ErrorCode = known?.code ?? 'ERR_INTERNAL'
  const spec = ERRORS[code]
  const problem: Problem = {
    type: `urn:initless:error:${code}`,
    title: spec.title,
    status: spec.status,
    detail: known ? known.message : 'internal error',
    code,
    requestId,
    // RFC 9457 extension members an error chose to show (a failed deploy's step and output).
    ...(isPlainObject(known?.details.problem) ? known.details.problem : {}),
  }
  if (!known) log.error({ err }, 'unhandled error')
  else if (spec.status >= 500)
    log.warn({ code, detail: known.message, details: known.details }, 'request failed')
  else log.info({ code, detail: known.message }, 'request refused')

  const headers = new Headers({ 'content-type': PROBLEM_CONTENT_TYPE, 'x-request-id': requestId })
  const retryAfter = known?.details.retryAfterS
  if (typeof retryAfter === 'number') headers.set('retry-after', String(retryAfter))
  else if (spec.status === 503) headers.set('retry-after', '1')
  if (spec.status === 401) headers.set('www-authenticate', 'Bearer realm="initless-admin"')
  return new Response(JSON.stringify(problem), { status: spec.status, headers })
}
