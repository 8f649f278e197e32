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

/** A rendered problem answer: what both a Response and a raw socket write are made of. */
export interface RenderedProblem {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
}

/** Render `err` (ERR_INTERNAL without its message when it is not one of ours). */
export function renderProblem(err: unknown, requestId: string): RenderedProblem {
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
  const headers: Record<string, string> = { 'content-type': PROBLEM_CONTENT_TYPE, 'x-request-id': requestId }
  const retryAfter = known?.details.retryAfterS
  if (typeof retryAfter === 'number') headers['retry-after'] = String(retryAfter)
  else if (spec.status === 503) headers['retry-after'] = '1'
  // A function's key check names its own challenge (gateway/access/admission.ts).
  const challenge = known?.details.wwwAuthenticate
  if (typeof challenge === 'string') headers['www-authenticate'] = challenge
  else if (spec.status === 401) headers['www-authenticate'] = 'Bearer realm="initless-admin"'
  return { status: spec.status, headers, body: JSON.stringify(problem) }
}

/** Render `err` as a problem response, logging it at a level that matches its status. */
export function problemResponse(err: unknown, requestId: string, log: RequestLog): Response {
  const known = isInitlessError(err) ? err : undefined
  const status = known ? ERRORS[known.code].status : 500
  if (!known) log.error({ err }, 'unhandled error')
  else if (status >= 500)
    log.warn({ code: known.code, detail: known.message, details: known.details }, 'request failed')
  else log.info({ code: known.code, detail: known.message }, 'request refused')
  const rendered = renderProblem(err, requestId)
  return new Response(rendered.body, { status: rendered.status, headers: rendered.headers })
}
