/**
 * `ANY /fn/:name/*`: route a request to an instance of the function and stream the answer back.
 * Only addresses from the registry (via the pool) are ever proxied to, never one from the request.
 */
import type { ServerResponse } from 'node:http'
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response'
import { Hono } from 'hono'
import { InitlessError, isInitlessError } from '../../shared/errors.ts'
import { FUNCTION_NAME_RE } from '../../shared/manifest.ts'
import type { FunctionCatalog } from '../catalog.ts'
import { bodyTooLarge, forwardedHeaders, hasBody, type Forwarder } from '../forwarder.ts'
import type { InstancePool } from '../instance-pool.ts'
import type { GatewayMetrics, StartKind } from '../metrics.ts'
import type { GatewayEnv } from '../request-context.ts'
import { serverTiming } from '../server-timing.ts'

export interface InvokeRouteDeps {
  readonly catalog: FunctionCatalog
  readonly pool: Pick<InstancePool, 'acquire'>
  readonly forwarder: Forwarder
  readonly metrics: GatewayMetrics
  readonly maxBodyBytes: number
  readonly trustProxy: boolean
}

const PREFIX = '/fn/'

/** Routes mounted at the app root (they own the /fn/ prefix). */
export function createInvokeRoutes(deps: InvokeRouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>()
  app.all('/fn/:name/*', async (c) => {
    const url = new URL(c.req.url)
    // The raw (still percent-encoded) segment: `a%2Fb` or `%2e%2e` are not names.
    const rest = url.pathname.slice(PREFIX.length)
    const slash = rest.indexOf('/')
    const name = slash < 0 ? rest : rest.slice(0, slash)
    if (!FUNCTION_NAME_RE.test(name)) {
      throw new InitlessError(
        'ERR_FUNCTION_NAME_INVALID',
        'the path does not name a function (lowercase DNS label)',
      )
    }
    const manifest = deps.catalog.get(name)
    if (!manifest) throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function named ${name}`)

    const requestId = c.get('requestId')
    const log = c.get('log').child({ fn: name })
    const incoming = c.env?.incoming
    const outgoing = c.env?.outgoing
    const node = incoming && outgoing ? { incoming, outgoing } : undefined
    // Under node-server, reading c.req.raw.signal (or body) makes it start consuming the incoming
    // stream into a web ReadableStream, stealing the body from the proxy: watch the socket instead.
    const signal = outgoing ? clientGone(outgoing) : c.req.raw.signal
    const isReplayable = !hasBody(c.req.method, c.req.raw.headers)
    const requestHeaders = {
      ...forwardedHeaders({
        forwardedFor: c.req.header('x-forwarded-for'),
        forwardedProto: c.req.header('x-forwarded-proto'),
        forwardedHost: c.req.header('x-forwarded-host'),
        host: c.req.header('host') ?? url.host,
        remoteAddress: incoming?.socket.remoteAddress,
        protocol: url.protocol === 'https:' ? 'https' : 'http',
        trustProxy: deps.trustProxy,
      }),
      'x-request-id': requestId,
    }
    let start: StartKind = 'none'
    try {
      const length = c.req.header('content-length')
      if (length !== undefined && Number(length) > deps.maxBodyBytes) throw bodyTooLarge(deps.maxBodyBytes)
      // One retry for a dead instance, one for a keep-alive socket the instance had just closed;
      // only when the request has no body (the body stream cannot be replayed).
      let deadRetries = 0
      let staleRetries = 0
      for (;;) {
        const lease = await deps.pool.acquire(manifest, { traceId: requestId, signal })
        start = lease.isCold ? 'cold' : 'warm'
        deps.metrics.waited(name, start, lease.waitedMs)
        try {
          const result = await deps.forwarder.forward({
            target: lease.address,
            path: (slash < 0 ? '/' : rest.slice(slash)) + url.search,
            request: c.req.raw,
            ...(node ? { node } : {}),
            requestHeaders,
            responseHeaders: (upstreamMs) => ({
              'server-timing': serverTiming({ ...lease, upstreamMs }),
              'x-request-id': requestId,
            }),
            maxBodyBytes: deps.maxBodyBytes,
            timeoutMs: manifest.timeouts.request,
          })
          lease.release()
          deps.metrics.invocation(name, result.status, start)
          deps.metrics.upstream(name, result.upstreamMs)
          log.debug({ instanceId: lease.instanceId, status: result.status, start }, 'request proxied')
          return result.response ?? RESPONSE_ALREADY_SENT
        } catch (err) {
          const details = isInitlessError(err) ? err.details : {}
          const isRefused = details.isRefused === true
          if (isRefused) lease.markDead()
          else lease.release()
          if (details.isRetryable !== true || !isReplayable) throw err
          if (isRefused ? deadRetries++ > 0 : staleRetries++ > 0) throw err
          log.info({ instanceId: lease.instanceId, errno: details.errno }, 'retrying request')
        }
      }
    } catch (err) {
      deps.metrics.invocation(name, isInitlessError(err) ? err.status : 500, start)
      throw err
    }
  })
  return app
}

/** Aborts when the client disconnects before its response was completely written. */
function clientGone(outgoing: ServerResponse): AbortSignal {
  const ac = new AbortController()
  outgoing.once('close', () => {
    if (!outgoing.writableFinished) ac.abort()
  })
  return ac.signal
}
