/** Per-request context: the request id (accepted from X-Request-Id or generated) and its logger. */
import { randomUUID } from 'node:crypto'
import type { HttpBindings } from '@hono/node-server'
import type { MiddlewareHandler } from 'hono'
import type { Logger } from 'pino'

/** Hono environment of the gateway. Bindings are absent under app.request()/app.fetch(). */
export interface GatewayEnv {
  Bindings: Partial<HttpBindings> | undefined
  Variables: { requestId: string; log: Logger }
}

/** What we accept as a caller's request id: short, printable, no separators that break logs. */
const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/

export function requestContext(logger: Logger): MiddlewareHandler<GatewayEnv> {
  return async (c, next) => {
    const given = c.req.header('x-request-id')
    const requestId = given !== undefined && REQUEST_ID_RE.test(given) ? given : randomUUID()
    c.set('requestId', requestId)
    c.set('log', logger.child({ requestId }))
    await next()
    // A response streamed straight to the socket got its id from the forwarder.
    if (!c.res.headers.has('x-hono-already-sent')) c.header('x-request-id', requestId)
  }
}
