/**
 * Forwarder over http-proxy, streaming the raw Node request and response: the only file that
 * imports http-proxy. Quirks handled here:
 * - http-proxy emits 'error' on the server for failures without a per-call callback (ECONNRESET
 *   when the client left); an emitter without an 'error' listener crashes the process.
 * - http-proxy does not listen for errors on the upstream response: an instance dying mid-body
 *   would throw. We handle the response ourselves (selfHandleResponse) and destroy the client
 *   connection instead.
 * - Its request-side header handling is minimal, so hop-by-hop headers are dropped and
 *   X-Forwarded-* set on the incoming request before it is proxied (we own that request).
 * - Its urlJoin collapses repeated slashes in the upstream path.
 */
import type { ClientRequest, IncomingMessage } from 'node:http'
import type { Transform } from 'node:stream'
import httpProxy from 'http-proxy'
import type { Logger } from 'pino'
import { errorMessage, InitlessError, isInitlessError } from '../shared/errors.ts'
import {
  clientHeaders,
  createBodyLimit,
  needsBodyLimit,
  upstreamError,
  upstreamHeaders,
  type ForwardResult,
  type Forwarder,
} from './forwarder.ts'
import type { UpstreamAgents } from './upstream-agents.ts'

interface Exchange {
  onProxyReq(proxyReq: ClientRequest): void
  onProxyRes(proxyRes: IncomingMessage): void
}

/**
 * The exchange of a request, on the request itself: http-proxy's events name only the request. A
 * property rather than a WeakMap, whose entries for every request cost the garbage collector more.
 */
const EXCHANGE = Symbol('initless.exchange')

type ExchangeCarrier = IncomingMessage & { [EXCHANGE]?: Exchange }

const exchangeOf = (req: IncomingMessage): Exchange | undefined => (req as ExchangeCarrier)[EXCHANGE]

/** Create the streaming forwarder used when served over node:http. */
export function createHttpProxyForwarder(deps: { agents: UpstreamAgents; logger: Logger }): Forwarder & {
  close(): void
} {
  const log = deps.logger.child({ module: 'proxy' })
  const proxy = httpProxy.createProxyServer({
    xfwd: false,
    ws: false,
    selfHandleResponse: true,
    ignorePath: true,
  })
  proxy.on('error', (err, req) => log.warn({ err: err.message, url: req.url }, 'proxy error'))
  proxy.on('econnreset', (err) => log.debug({ err: err.message }, 'client reset during proxying'))
  proxy.on('proxyReq', (proxyReq, req) => exchangeOf(req)?.onProxyReq(proxyReq))
  proxy.on('proxyRes', (proxyRes, req) => exchangeOf(req)?.onProxyRes(proxyRes))

  return {
    close() {
      proxy.close()
    },
    forward(r) {
      if (!r.node) {
        return Promise.reject(
          new InitlessError('ERR_INTERNAL', 'http-proxy forwarder needs the Node request'),
        )
      }
      const { incoming, outgoing } = r.node
      const startedAt = performance.now()
      return new Promise<ForwardResult>((resolve, reject) => {
        let proxyReq: ClientRequest | undefined
        let status = 0
        let upstreamMs = 0
        let failure: InitlessError | undefined
        let isSettled = false
        const settleError = (err: InitlessError) => {
          if (isSettled) return
          clearTimeout(timer)
          proxyReq?.destroy()
          if (outgoing.headersSent) {
            // Too late for a problem answer: end the client connection so it sees the failure.
            log.warn({ code: err.code, detail: err.message }, 'upstream failed after response started')
            outgoing.destroy()
            return
          }
          isSettled = true
          reject(err)
        }
        const timer = setTimeout(() => {
          failure = upstreamError(new Error('timeout'), r.target, { timedOutAfterMs: r.timeoutMs })
          settleError(failure)
        }, r.timeoutMs)
        outgoing.once('close', () => {
          clearTimeout(timer)
          proxyReq?.destroy()
          if (isSettled) return
          isSettled = true
          if (status) resolve({ status, upstreamMs })
          else
            reject(
              new InitlessError('ERR_GATEWAY_CLIENT_CLOSED', 'client closed the request during proxying'),
            )
        })

        const carrier: ExchangeCarrier = incoming
        carrier[EXCHANGE] = {
          onProxyReq(req) {
            proxyReq = req
            if (failure) req.destroy()
          },
          onProxyRes(proxyRes) {
            clearTimeout(timer)
            if (failure || isSettled) return proxyRes.destroy()
            upstreamMs = performance.now() - startedAt
            status = proxyRes.statusCode ?? 502
            proxyRes.on('error', (err) => settleError(upstreamError(err, r.target)))
            // An instance dying mid-body: pipe() would leave the client waiting forever.
            proxyRes.on('close', () => {
              if (!proxyRes.complete) settleError(upstreamError(new Error('response cut off'), r.target))
            })
            try {
              outgoing.writeHead(
                status,
                proxyRes.statusMessage,
                clientHeaders(proxyRes.headers, r.responseHeaders(upstreamMs)),
              )
            } catch (err) {
              log.warn({ err: errorMessage(err) }, 'invalid upstream response headers')
              return settleError(
                new InitlessError('ERR_GATEWAY_UPSTREAM_FAILED', 'invalid upstream response headers'),
              )
            }
            proxyRes.pipe(outgoing)
          },
        }

        // A chunked body goes through a counter that cuts it off past the limit (it has no
        // Content-Length to check up front); any other body is piped as it is.
        let limit: Transform | undefined
        try {
          if (needsBodyLimit(incoming.headers, r.maxBodyBytes)) limit = createBodyLimit(r.maxBodyBytes)
        } catch (err) {
          return settleError(isInitlessError(err) ? err : upstreamError(err as Error, r.target))
        }
        limit?.on('error', (err) => {
          incoming.unpipe(limit)
          failure = isInitlessError(err) ? err : upstreamError(err, r.target)
          settleError(failure)
        })
        incoming.headers = upstreamHeaders(incoming.headers, r.requestHeaders, r.dropHeaders)
        proxy.web(
          incoming,
          outgoing,
          {
            target: { host: r.target.host, port: r.target.port, path: r.path },
            agent: deps.agents.get(r.target),
            ...(limit ? { buffer: limit } : {}),
          },
          (err: NodeJS.ErrnoException) => {
            if (failure) return settleError(failure)
            const isReusedSocket = proxyReq?.reusedSocket === true
            settleError(upstreamError(err, r.target, { isReusedSocket }))
          },
        )
        if (limit) incoming.pipe(limit)
      })
    },
  }
}
