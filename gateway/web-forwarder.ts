/**
 * Forwarder for callers without Node's raw request (app.request() in tests, other hono runtimes):
 * sends the fetch Request with node:http and returns a streaming Response. node:http rather than
 * fetch() because fetch decompresses bodies: the function's response must pass through untouched.
 */
import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http'
import { Readable } from 'node:stream'
import type { ReadableStream as NodeReadableStream } from 'node:stream/web'
import { InitlessError, isInitlessError } from '../shared/errors.ts'
import {
  clientHeaders,
  createBodyLimit,
  upstreamError,
  upstreamHeaders,
  type ForwardResult,
  type Forwarder,
} from './forwarder.ts'
import type { UpstreamAgents } from './upstream-agents.ts'

/** Statuses whose responses never have a body (a Response with one would throw). */
const NULL_BODY = new Set([101, 204, 205, 304])

/** Create the fetch-style forwarder. */
export function createWebForwarder(deps: { agents: UpstreamAgents }): Forwarder {
  return {
    forward(r) {
      const startedAt = performance.now()
      const request = r.request
      if (!request) {
        return Promise.reject(new InitlessError('ERR_INTERNAL', 'web forwarder needs the fetch Request'))
      }
      const incoming: IncomingHttpHeaders = {}
      request.headers.forEach((v, k) => (incoming[k] = v))
      return new Promise<ForwardResult>((resolve, reject) => {
        let failure: InitlessError | undefined
        const req = httpRequest({
          host: r.target.host,
          port: r.target.port,
          method: request.method,
          path: r.path,
          headers: upstreamHeaders(incoming, r.requestHeaders, r.dropHeaders),
          agent: deps.agents.get(r.target),
        })
        const fail = (err: InitlessError) => {
          failure ??= err
          clearTimeout(timer)
          req.destroy(err)
        }
        const timer = setTimeout(
          () => fail(upstreamError(new Error('timeout'), r.target, { timedOutAfterMs: r.timeoutMs })),
          r.timeoutMs,
        )
        const onAbort = () =>
          fail(new InitlessError('ERR_GATEWAY_CLIENT_CLOSED', 'client closed the request during proxying'))
        request.signal.addEventListener('abort', onAbort, { once: true })
        req.on('error', (err: NodeJS.ErrnoException) => {
          clearTimeout(timer)
          reject(failure ?? upstreamError(err, r.target, { isReusedSocket: req.reusedSocket }))
        })
        req.on('response', (res) => {
          clearTimeout(timer)
          request.signal.removeEventListener('abort', onAbort)
          const upstreamMs = performance.now() - startedAt
          const status = res.statusCode ?? 502
          const headers = toHeaders(clientHeaders(res.headers, r.responseHeaders(upstreamMs)))
          const isEmpty = NULL_BODY.has(status) || request.method === 'HEAD'
          if (isEmpty) res.resume()
          const body = isEmpty ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>)
          resolve({
            status,
            upstreamMs,
            response: new Response(body, { status, statusText: res.statusMessage, headers }),
          })
        })
        if (!request.body) {
          req.end()
          return
        }
        const limit = createBodyLimit(r.maxBodyBytes)
        const body = Readable.fromWeb(request.body as NodeReadableStream<Uint8Array>)
        const onBodyError = (err: Error) => fail(isInitlessError(err) ? err : upstreamError(err, r.target))
        body.on('error', onBodyError)
        limit.on('error', onBodyError)
        body.pipe(limit).pipe(req)
      })
    },
  }
}

function toHeaders(headers: OutgoingHttpHeaders): Headers {
  const out = new Headers()
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue
    if (Array.isArray(v)) for (const item of v) out.append(k, item)
    else out.set(k, String(v))
  }
  return out
}
