/** Per-request context: the request id (accepted from X-Request-Id or generated) and its logger. */
import { randomUUID } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'
import type { HttpBindings } from '@hono/node-server'
import type { Context, MiddlewareHandler } from 'hono'
import type { Logger } from 'pino'
import { createRequestLog, type RequestLog } from './request-log.ts'

/** Hono environment of the gateway. Bindings are absent under app.request()/app.fetch(). */
export interface GatewayEnv {
  Bindings: Partial<HttpBindings> | undefined
  Variables: { requestId: string; log: RequestLog }
}

/** What we accept as a caller's request id: short, printable, no separators that break logs. */
const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/

/**
 * A request header. Under @hono/node-server it is read from Node's parsed headers: c.req.header()
 * would build a fetch Headers object from the raw request, which the proxy path never needs.
 */
export function requestHeader(c: Context<GatewayEnv>, name: string): string | undefined {
  const incoming = c.env?.incoming
  return incoming ? nodeHeader(incoming.headers, name) : c.req.header(name)
}

/** A header of a Node request as fetch's Headers.get() would give it (repeated values joined). */
export function nodeHeader(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v.join(', ') : v
}

/** The caller's X-Request-Id when acceptable, else a new one. */
export function requestIdFrom(given: string | undefined): string {
  return given !== undefined && REQUEST_ID_RE.test(given) ? given : randomUUID()
}

export function requestContext(logger: Logger): MiddlewareHandler<GatewayEnv> {
  return async (c, next) => {
    const requestId = requestIdFrom(requestHeader(c, 'x-request-id'))
    c.set('requestId', requestId)
    c.set('log', createRequestLog(logger, { requestId }))
    await next()
    // A response streamed straight to the socket got its id from the forwarder.
    if (!c.res.headers.has('x-hono-already-sent')) c.header('x-request-id', requestId)
  }
}
