/**
 * `ANY /fn/:name/*`: route a request to an instance of the function and stream the answer back.
 * Only addresses from the registry (via the pool) are ever proxied to, never one from the request.
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response'
import { Hono } from 'hono'
import { InitlessError, isInitlessError } from '../../shared/errors.ts'
import { FUNCTION_NAME_RE } from '../../shared/manifest.ts'
import type { Admission } from '../access/admission.ts'
import type { FunctionCatalog } from '../catalog.ts'
import { bodyTooLarge, forwardedHeaders, hasBody, type Forwarder } from '../forwarder.ts'
import type { DeathReports } from '../instance-deaths.ts'
import type { InstancePool } from '../instance-pool.ts'
import type { GatewayMetrics, StartKind } from '../metrics.ts'
import { requestHeader, type GatewayEnv } from '../request-context.ts'
import type { RequestLog } from '../request-log.ts'
import { serverTiming } from '../server-timing.ts'

export interface InvokeRouteDeps {
  readonly catalog: FunctionCatalog
  readonly pool: Pick<InstancePool, 'acquire' | 'tryAcquire'>
  readonly forwarder: Forwarder
  readonly metrics: GatewayMetrics
  readonly maxBodyBytes: number
  readonly trustProxy: boolean
  /** Keys and rate limits of the functions that have them; absent: every function is open. */
  readonly admission?: Admission
  /** Why instances died (ERR_INSTANCE_DIED), and recycling of those past timeouts.request. */
  readonly deaths?: DeathReports
}

/** One request for `/fn/<name>/...`, as the hono route and the direct Node lane both see it. */
export interface InvokeRequest {
  readonly method: string
  /** Path as received, still percent-encoded, starting with `/fn/`. */
  readonly pathname: string
  /** `?query`, or empty. */
  readonly search: string
  /** The authority the request was sent to (Host header, else the URL's). */
  readonly host: string
  readonly isHttps: boolean
  readonly header: (name: string) => string | undefined
  readonly headers: IncomingHttpHeaders | Headers
  readonly requestId: string
  readonly log: RequestLog
  /** The raw Node request/response when served over node:http. */
  readonly node?: { readonly incoming: IncomingMessage; readonly outgoing: ServerResponse }
  /** The fetch Request, for forwarders that send its body (absent on the direct Node lane). */
  readonly request?: Request
  /** Aborts when the client leaves. Only asked for when the request has to wait for a slot. */
  readonly signal: () => AbortSignal
}

/** Proxy one request; resolves with the response, or undefined once it was written to `node`. */
export type Invoke = (request: InvokeRequest) => Promise<Response | undefined>

const PREFIX = '/fn/'

/** The invoke handler, free of hono so the direct Node lane can call it too. */
export function createInvoke(deps: InvokeRouteDeps): Invoke {
  return async (req) => {
    // The raw (still percent-encoded) segment: `a%2Fb` or `%2e%2e` are not names.
    const rest = req.pathname.slice(PREFIX.length)
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

    const { requestId, header } = req
    const log = req.log.child({ fn: name })
    const isReplayable = !hasBody(req.method, req.headers)
    const requestHeaders = {
      ...forwardedHeaders({
        forwardedFor: header('x-forwarded-for'),
        forwardedProto: header('x-forwarded-proto'),
        forwardedHost: header('x-forwarded-host'),
        host: req.host,
        remoteAddress: req.node?.incoming.socket.remoteAddress,
        protocol: req.isHttps ? 'https' : 'http',
        trustProxy: deps.trustProxy,
      }),
      'x-request-id': requestId,
    }
    let start: StartKind = 'none'
    try {
      const admitted = deps.admission?.isGuarded(manifest)
        ? await deps.admission.admit(manifest, {
            header,
            remoteAddress: req.node?.incoming.socket.remoteAddress,
          })
        : undefined
      const length = header('content-length')
      if (length !== undefined && Number(length) > deps.maxBodyBytes) throw bodyTooLarge(deps.maxBodyBytes)
      // One retry for a dead instance, one for a keep-alive socket the instance had just closed;
      // only when the request has no body (the body stream cannot be replayed).
      let deadRetries = 0
      let staleRetries = 0
      let signal: AbortSignal | undefined
      for (;;) {
        // A ready instance with a free slot is taken synchronously; only a request that waits
        // needs to learn that its client left.
        const lease =
          deps.pool.tryAcquire(manifest) ??
          (await deps.pool.acquire(manifest, { traceId: requestId, signal: (signal ??= req.signal()) }))
        start = lease.isThawed ? 'thawed' : lease.isCold ? 'cold' : 'warm'
        deps.metrics.waited(name, start, lease.waitedMs)
        try {
          const result = await deps.forwarder.forward({
            target: lease.address,
            path: (slash < 0 ? '/' : rest.slice(slash)) + req.search,
            ...(req.request ? { request: req.request } : {}),
            ...(req.node ? { node: req.node } : {}),
            requestHeaders,
            ...(admitted?.dropHeaders ? { dropHeaders: admitted.dropHeaders } : {}),
            responseHeaders: (upstreamMs) => ({
              'server-timing': serverTiming({
                isCold: lease.isCold,
                isThawed: lease.isThawed,
                waitedMs: lease.waitedMs,
                phases: lease.phases,
                isBooted: lease.isBooted,
                upstreamMs,
              }),
              'x-request-id': requestId,
            }),
            maxBodyBytes: deps.maxBodyBytes,
            timeoutMs: manifest.timeouts.request,
          })
          lease.release()
          deps.metrics.invocation(name, result.status, start)
          deps.metrics.upstream(name, result.upstreamMs)
          log.debug(
            { instanceId: lease.instanceId, status: result.status, start, keyId: admitted?.keyId },
            'request proxied',
          )
          return result.response
        } catch (err) {
          const details = isInitlessError(err) ? err.details : {}
          const isRefused = details.isRefused === true
          if (isRefused) lease.markDead()
          else lease.release()
          if (details.isRetryable !== true || !isReplayable)
            throw await explainFailure(deps.deaths, err, { fn: name, id: lease.instanceId, log })
          if (isRefused ? deadRetries++ > 0 : staleRetries++ > 0) throw err
          log.info({ instanceId: lease.instanceId, errno: details.errno }, 'retrying request')
        }
      }
    } catch (err) {
      deps.metrics.invocation(name, isInitlessError(err) ? err.status : 500, start)
      throw err
    }
  }
}

/**
 * The error a request's final failure is answered with. The instance's connection broke: if its
 * executor records a death (it checks every reap interval), ERR_INSTANCE_DIED with the reason.
 * The function ran past timeouts.request: the 504 stands, and the instance is recycled (a spinning
 * instance would hold its slot and its CPU quota).
 */
async function explainFailure(
  deaths: DeathReports | undefined,
  err: unknown,
  at: { fn: string; id: string; log: RequestLog },
): Promise<unknown> {
  if (!deaths || !isInitlessError(err)) return err
  if (err.code === 'ERR_GATEWAY_TIMEOUT' && err.details.target !== undefined) {
    await deaths
      .recycle(at.fn, at.id, err.message)
      .then(() => at.log.warn({ instanceId: at.id }, 'instance recycled after a request timeout'))
      .catch((e: unknown) => at.log.warn({ instanceId: at.id, err: String(e) }, 'recycle failed'))
    return err
  }
  if (err.code !== 'ERR_GATEWAY_UPSTREAM_FAILED' || err.details.target === undefined) return err
  const death = await deaths.reasonFor(at.id)
  if (!death) return err
  return new InitlessError('ERR_INSTANCE_DIED', `instance ${at.id} died: ${death.detail}`, {
    cause: err,
    details: { problem: { reason: death.reason, instanceId: at.id } },
  })
}

/** Routes mounted at the app root (they own the /fn/ prefix). */
export function createInvokeRoutes(invoke: Invoke): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>()
  app.all('/fn/:name/*', async (c) => {
    const url = splitUrl(c.req.url)
    const incoming = c.env?.incoming
    const outgoing = c.env?.outgoing
    const response = await invoke({
      method: c.req.method,
      pathname: url.pathname,
      search: url.search,
      host: requestHeader(c, 'host') ?? url.host,
      isHttps: url.isHttps,
      // Under node-server every header is read from Node's parsed headers (requestHeader): the
      // fetch Request's headers, signal or body are never built on this path. Reading its signal
      // or body would also make node-server consume the incoming stream, stealing the body from
      // the proxy.
      header: (name) => requestHeader(c, name),
      headers: incoming ? incoming.headers : c.req.raw.headers,
      requestId: c.get('requestId'),
      log: c.get('log'),
      request: c.req.raw,
      ...(incoming && outgoing ? { node: { incoming, outgoing } } : {}),
      signal: () => (outgoing ? clientGone(outgoing) : c.req.raw.signal),
    })
    return response ?? RESPONSE_ALREADY_SENT
  })
  return app
}

export interface SplitUrl {
  /** Path as sent, still percent-encoded (dot segments already resolved by the URL parser). */
  readonly pathname: string
  /** `?query`, or empty. */
  readonly search: string
  readonly host: string
  readonly isHttps: boolean
}

/**
 * The parts of an absolute URL serialised by the URL parser (c.req.url), by string search: the
 * same results as `new URL(href)` for such a string without parsing it a second time.
 */
export function splitUrl(href: string): SplitUrl {
  const hostStart = href.indexOf('://') + 3
  let end = href.indexOf('#', hostStart)
  if (end < 0) end = href.length
  let pathStart = href.indexOf('/', hostStart)
  if (pathStart < 0 || pathStart > end) pathStart = end
  let query = href.indexOf('?', pathStart)
  if (query < 0 || query > end) query = end
  const host = href.slice(hostStart, pathStart)
  const at = host.lastIndexOf('@')
  return {
    pathname: pathStart === query ? '/' : href.slice(pathStart, query),
    // `?` alone is an empty query, as URL.search has it.
    search: end - query > 1 ? href.slice(query, end) : '',
    host: at < 0 ? host : host.slice(at + 1),
    isHttps: href.startsWith('https:'),
  }
}

/** Aborts when the client disconnects before its response was completely written. */
export function clientGone(outgoing: ServerResponse): AbortSignal {
  const ac = new AbortController()
  outgoing.once('close', () => {
    if (!outgoing.writableFinished) ac.abort()
  })
  return ac.signal
}
