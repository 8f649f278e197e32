/**
 * The Forwarder port (send one request to an instance, stream the answer back) and the header
 * rules both adapters share: hop-by-hop headers, X-Forwarded-*, errors classified for retries.
 */
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import { Transform } from 'node:stream'
import type { InstanceAddress } from '../shared/contracts.ts'
import { InitlessError } from '../shared/errors.ts'

export interface ForwardRequest {
  readonly target: InstanceAddress
  /** Path and query to send upstream (the `/fn/<name>` prefix already stripped). */
  readonly path: string
  /**
   * The request as the app sees it: method, headers, and the body when `node` is absent. Absent
   * on the direct Node lane, which has only `node`.
   */
  readonly request?: Request
  /** The raw Node request/response when served over node:http: streamed with no copies. */
  readonly node?: { readonly incoming: IncomingMessage; readonly outgoing: ServerResponse }
  /** Headers to set on the upstream request (X-Forwarded-*, X-Request-Id), replacing any sent. */
  readonly requestHeaders: Readonly<Record<string, string>>
  /** Request headers never passed on (the platform's invocation key, gateway/access/admission.ts). */
  readonly dropHeaders?: ReadonlySet<string>
  /** Headers added to the response once the upstream answered (Server-Timing, X-Request-Id). */
  readonly responseHeaders: (upstreamMs: number) => Readonly<Record<string, string>>
  /** Body bytes allowed; a longer (chunked) body is cut off with 413. */
  readonly maxBodyBytes: number
  /** Time allowed until the upstream's response headers, in ms (manifest timeouts.request). */
  readonly timeoutMs: number
}

export interface ForwardResult {
  readonly status: number
  /** Request sent -> response headers received, in ms. */
  readonly upstreamMs: number
  /** The response to return from the handler; absent when it was written to `node.outgoing`. */
  readonly response?: Response
}

/**
 * Sends a request to an instance. Rejects only while nothing was written to the client, with
 * ERR_GATEWAY_UPSTREAM_FAILED (details.isRefused: the instance is dead; details.isRetryable: the
 * request never reached it),
 * ERR_GATEWAY_TIMEOUT or ERR_GATEWAY_BODY_TOO_LARGE. Failures after the response started end the
 * client connection instead.
 */
export interface Forwarder {
  forward(request: ForwardRequest): Promise<ForwardResult>
}

/** RFC 9110 §7.6.1 connection-specific headers, never forwarded in either direction. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
])

/** Copy `headers` without hop-by-hop headers and those named in Connection. */
export function withoutHopByHop<T extends IncomingHttpHeaders | OutgoingHttpHeaders>(headers: T): T {
  return copyEndToEnd(headers) as T
}

/** Headers we set on the upstream request ourselves; a client's are never passed on. */
const FORWARDED = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host'])

/** The end-to-end headers of `headers` (lowercase names), leaving out `drop` too. */
function copyEndToEnd(
  headers: IncomingHttpHeaders | OutgoingHttpHeaders,
  drop?: ReadonlySet<string>,
): Record<string, NonNullable<OutgoingHttpHeaders[string]>> {
  // Connection is nearly always absent or `keep-alive`/`close` (hop-by-hop already): no Set then.
  const connection = headers.connection
  const tokens = connection === undefined ? '' : String(connection).toLowerCase()
  const named =
    tokens === '' || tokens === 'keep-alive' || tokens === 'close'
      ? undefined
      : new Set(tokens.split(',').map((t) => t.trim()))
  const out: Record<string, NonNullable<OutgoingHttpHeaders[string]>> = {}
  for (const k of Object.keys(headers)) {
    const v = headers[k]
    if (v === undefined) continue
    const key = k.toLowerCase()
    if (HOP_BY_HOP.has(key) || named?.has(key) || drop?.has(key)) continue
    out[key] = v
  }
  return out
}

export interface ForwardedInput {
  /** Incoming X-Forwarded-For / -Proto / -Host, if any. */
  readonly forwardedFor?: string | undefined
  readonly forwardedProto?: string | undefined
  readonly forwardedHost?: string | undefined
  readonly host?: string | undefined
  /** The TCP peer's address, when known. */
  readonly remoteAddress?: string | undefined
  readonly protocol: 'http' | 'https'
  /** Keep (and append to) what a trusted proxy in front of us sent; otherwise replace it. */
  readonly trustProxy: boolean
}

/** X-Forwarded-For/Proto/Host for the upstream request. */
export function forwardedHeaders(input: ForwardedInput): Record<string, string> {
  const out: Record<string, string> = {}
  const chain = [input.trustProxy ? input.forwardedFor?.trim() : undefined, input.remoteAddress]
    .filter((v): v is string => Boolean(v))
    .join(', ')
  if (chain) out['x-forwarded-for'] = chain
  out['x-forwarded-proto'] = (input.trustProxy && input.forwardedProto) || input.protocol
  const host = (input.trustProxy && input.forwardedHost) || input.host
  if (host) out['x-forwarded-host'] = host
  return out
}

/** Headers for the upstream request: hop-by-hop dropped, any incoming X-Forwarded-* replaced. */
export function upstreamHeaders(
  incoming: IncomingHttpHeaders,
  extra: Readonly<Record<string, string>>,
  drop?: ReadonlySet<string>,
): IncomingHttpHeaders {
  // Copied without the X-Forwarded-* rather than deleted after: `delete` turns the object into a
  // slow dictionary for everything that reads it afterwards (http-proxy, node:http).
  const out = copyEndToEnd(
    incoming,
    drop ? new Set([...FORWARDED, ...drop]) : FORWARDED,
  ) as IncomingHttpHeaders
  for (const k of Object.keys(extra)) out[k.toLowerCase()] = extra[k]
  return out
}

/** Response headers for the client: hop-by-hop dropped, ours added (Server-Timing appended). */
export function clientHeaders(
  upstream: IncomingHttpHeaders,
  extra: Readonly<Record<string, string>>,
): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = copyEndToEnd(upstream)
  for (const k of Object.keys(extra)) {
    const v = extra[k] as string
    const key = k.toLowerCase()
    const cur = out[key]
    out[key] = key === 'server-timing' && typeof cur === 'string' && cur ? `${cur}, ${v}` : v
  }
  return out
}

/** Whether the request carries a body (it then cannot be replayed on another instance). */
export function hasBody(method: string, headers: IncomingHttpHeaders | Headers): boolean {
  if (method === 'GET' || method === 'HEAD') return false
  const get = (k: string) => (headers instanceof Headers ? headers.get(k) : headers[k]) ?? undefined
  const length = get('content-length')
  return get('transfer-encoding') !== undefined || (length !== undefined && Number(length) > 0)
}

/**
 * Whether a request body must be counted on its way upstream. Only a chunked body has no length to
 * check up front: Node's parser never reads past a Content-Length, and a request with neither
 * header has no body (RFC 9112 §6.3). Throws ERR_GATEWAY_BODY_TOO_LARGE for a Content-Length over
 * `max`.
 */
export function needsBodyLimit(headers: IncomingHttpHeaders, max: number): boolean {
  if (headers['transfer-encoding'] !== undefined) return true
  const length = headers['content-length']
  if (length !== undefined && Number(length) > max) throw bodyTooLarge(max)
  return false
}

/** A pass-through stream that fails with ERR_GATEWAY_BODY_TOO_LARGE past `max` bytes. */
export function createBodyLimit(max: number): Transform {
  let seen = 0
  return new Transform({
    transform(chunk: Buffer, _enc, callback) {
      seen += chunk.length
      if (seen > max) callback(bodyTooLarge(max))
      else callback(null, chunk)
    },
  })
}

export function bodyTooLarge(max: number): InitlessError {
  return new InitlessError('ERR_GATEWAY_BODY_TOO_LARGE', `request body exceeds ${max} bytes`, {
    details: { maxBytes: max },
  })
}

/**
 * Classify a socket error of the upstream request (nothing sent to the client yet). Refused: the
 * instance is not listening (dead). A reset on a reused keep-alive socket is the idle-close race:
 * the request never reached the function, so a body-less request may be sent again too.
 */
export function upstreamError(
  err: NodeJS.ErrnoException,
  target: InstanceAddress,
  context: { readonly timedOutAfterMs?: number; readonly isReusedSocket?: boolean } = {},
): InitlessError {
  if (context.timedOutAfterMs !== undefined) {
    const detail = `function did not answer within ${context.timedOutAfterMs} ms`
    return new InitlessError('ERR_GATEWAY_TIMEOUT', detail, { details: { target } })
  }
  const isRefused = err.code === 'ECONNREFUSED'
  const isRetryable = isRefused || (err.code === 'ECONNRESET' && context.isReusedSocket === true)
  const detail = isRefused ? 'instance refused the connection' : 'upstream request failed'
  return new InitlessError('ERR_GATEWAY_UPSTREAM_FAILED', detail, {
    cause: err,
    details: { target, errno: err.code, isRefused, isRetryable },
  })
}
