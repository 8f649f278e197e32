/**
 * The gateway's node:http request listener. A function request whose target is already in the
 * form the URL parser would give it goes straight to the invoke handler (the direct lane): no fetch
 * Request, no hono context or middleware chain per request, which were most of the gateway's own
 * cost on the warm path. Every other request (admin, health, metrics, unusual targets) is served
 * by the hono app through @hono/node-server, unchanged. Both lanes run the same invoke handler and
 * answer errors with the same problem+json responses.
 */
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http'
import { Readable } from 'node:stream'
import type { ReadableStream as NodeReadableStream } from 'node:stream/web'
import { getRequestListener } from '@hono/node-server'
import type { Hono } from 'hono'
import type { Logger } from 'pino'
import { errorMessage } from '../shared/errors.ts'
import { problemResponse } from './problem.ts'
import { nodeHeader, requestIdFrom, type GatewayEnv } from './request-context.ts'
import { createRequestLog, type RequestLog } from './request-log.ts'
import { clientGone, type Invoke } from './routes/invoke.ts'

/**
 * Targets the direct lane takes: `/fn/<name>[/path][?query]` in printable ASCII without the
 * characters the URL parser would percent-encode (space, `"`, `<`, `>`, `` ` ``, `{`, `}`, and `'`
 * in the query), without `\` (a path separator to the URL parser) and without `#`.
 */
const DIRECT_TARGET_RE = /^\/fn\/[a-z0-9-]+(?:\/[!$-;=@-[\]^_a-z|~]*)?(?:\?[!$%&(-;=?-[\]^_a-z|~]*)?$/

/** A dot segment (`.`, `..`, or their percent-encoded forms) that the URL parser would resolve. */
const DOT_SEGMENT_RE = /\/(?:\.|%2e)/i

/**
 * Host header values the URL parser takes as they are: a lowercase name whose last label starts
 * with a letter (one ending in a number is parsed as IPv4), or a valid IPv4 address; a port below
 * 60000. Punycode (`xn--`) is left to the parser too.
 */
const PLAIN_HOST_RE =
  /^(?:(?:[a-z0-9-]+\.)*[a-z][a-z0-9-]*|(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))(?::(?:\d{1,4}|[1-5]\d{4}))?$/

/**
 * Whether the direct lane may serve this request: hono through node-server would route it to the
 * same handler with the same path, query and host (no normalisation of any of them would apply).
 */
export function isDirectTarget(target: string, host: string | undefined): boolean {
  if (host === undefined || !PLAIN_HOST_RE.test(host) || host.includes('xn--')) return false
  if (!DIRECT_TARGET_RE.test(target)) return false
  const query = target.indexOf('?')
  return !DOT_SEGMENT_RE.test(query < 0 ? target : target.slice(0, query))
}

export interface GatewayListenerDeps {
  readonly app: Hono<GatewayEnv>
  readonly invoke: Invoke
  /** The app's `http` logger (the direct lane logs as the app does). */
  readonly logger: Logger
}

/** Create the listener to serve the gateway with (`http.createServer(listener)`). */
export function createGatewayListener(deps: GatewayListenerDeps): RequestListener {
  const viaHono = getRequestListener(deps.app.fetch)
  const { invoke, logger } = deps
  return (incoming, outgoing) => {
    const target = incoming.url ?? ''
    const { headers } = incoming
    const host = headers.host
    // A Prefer header may ask for an asynchronous invocation (routes in async/routes.ts).
    if (!target.startsWith('/fn/') || headers.prefer !== undefined || !isDirectTarget(target, host)) {
      return void viaHono(incoming, outgoing)
    }
    const requestId = requestIdFrom(nodeHeader(headers, 'x-request-id'))
    const log = createRequestLog(logger, { requestId })
    const query = target.indexOf('?')
    invoke({
      method: incoming.method ?? 'GET',
      pathname: query < 0 ? target : target.slice(0, query),
      // `?` alone is an empty query, as URL.search has it.
      search: query < 0 || query === target.length - 1 ? '' : target.slice(query),
      host: host ?? '',
      isHttps: false,
      header: (name) => nodeHeader(headers, name),
      headers,
      requestId,
      log,
      node: { incoming, outgoing },
      signal: () => clientGone(outgoing),
    })
      .then((response) => response && send(response, incoming, outgoing, log))
      .catch((err: unknown) => sendProblem(problemResponse(err, requestId, log), outgoing))
      .catch((err: unknown) => {
        log.error({ err: errorMessage(err) }, 'could not send the response')
        outgoing.destroy()
      })
  }
}

/** A problem answer, whole (it is small), with its Content-Length as node-server would send it. */
async function sendProblem(response: Response, outgoing: ServerResponse): Promise<void> {
  const body = Buffer.from(await response.arrayBuffer())
  // The forwarder rejects only while nothing was written; anything else ends the connection.
  if (outgoing.headersSent || outgoing.destroyed) return void outgoing.destroy()
  const headers: Record<string, string | number> = { 'content-length': body.length }
  response.headers.forEach((value, key) => (headers[key] = value))
  outgoing.writeHead(response.status, headers)
  outgoing.end(body)
}

/** Write a forwarder's Response (one that did not stream to the socket itself). */
function send(
  response: Response,
  incoming: IncomingMessage,
  outgoing: ServerResponse,
  log: RequestLog,
): void {
  if (outgoing.headersSent || outgoing.destroyed) {
    void response.body?.cancel()
    return void outgoing.destroy()
  }
  const headers: Record<string, string | string[]> = {}
  response.headers.forEach((value, key) => (headers[key] = value))
  const cookies = response.headers.getSetCookie()
  if (cookies.length) headers['set-cookie'] = cookies
  outgoing.writeHead(response.status, response.statusText || undefined, headers)
  if (!response.body || incoming.method === 'HEAD') {
    void response.body?.cancel()
    outgoing.end()
    return
  }
  const body = Readable.fromWeb(response.body as NodeReadableStream<Uint8Array>)
  body.on('error', (err) => {
    log.warn({ err: errorMessage(err) }, 'response body failed')
    outgoing.destroy()
  })
  body.pipe(outgoing)
}
