/**
 * The gateway's defences against hostile or broken clients at the connection level, below the
 * app: timeouts for headers and for the whole request (slowloris), a header size limit, a cap on
 * the connections one source address holds open, and answers to malformed requests in
 * problem+json that reach the client (lingering close).
 *
 * Node's own handling of a request it cannot parse writes a bare status line and destroys the
 * socket at once: a client still sending (a 200 KB header) then gets a reset, and the kernel
 * discards the answer it had not read yet. Here the answer is written, the sending side closed,
 * and what the client still sends is read and dropped for up to LINGER_MS (nginx's lingering
 * close), so the client reads the answer.
 */
import {
  STATUS_CODES,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerOptions,
  type ServerResponse,
} from 'node:http'
import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import { InitlessError, type ErrorCode } from '../shared/errors.ts'
import { renderProblem } from './problem.ts'
import { requestIdFrom } from './request-context.ts'

export interface ClientGuardOptions {
  /** A request's headers must arrive within this (ms). */
  readonly headersTimeoutMs: number
  /** A request must arrive whole, body included, within this (ms). */
  readonly requestTimeoutMs: number
  /** Largest request head (request line and headers), bytes. */
  readonly maxHeaderBytes: number
  /** Connections one source address may hold open; beyond: 429. 0: no cap. */
  readonly maxConnectionsPerClient: number
}

/** How long a refused connection is read and drained before it is closed (ms). */
export const LINGER_MS = 5000

/** Options for `http.createServer`: the limits Node enforces itself. */
export function guardedServerOptions(o: ClientGuardOptions): ServerOptions {
  return {
    // Checked in wrap(), to answer in problem+json (Node's own check answers a bare 400).
    requireHostHeader: false,
    maxHeaderSize: o.maxHeaderBytes,
    headersTimeout: o.headersTimeoutMs,
    requestTimeout: o.requestTimeoutMs,
    // Node checks both timeouts on this interval (30 s by default): check often enough that they
    // hold within a fraction of themselves.
    connectionsCheckingInterval: Math.max(250, Math.min(1000, Math.floor(o.headersTimeoutMs / 4))),
  }
}

/** Which problem answers a parse or timeout error Node reports for a connection. */
export function clientErrorProblem(err: NodeJS.ErrnoException, maxHeaderBytes: number): InitlessError {
  const problem = (code: ErrorCode, detail: string) => new InitlessError(code, detail)
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return problem(
        'ERR_GATEWAY_HEADERS_TOO_LARGE',
        `request line and headers exceed ${maxHeaderBytes} bytes`,
      )
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return problem('ERR_GATEWAY_REQUEST_TIMEOUT', 'the request did not arrive in time')
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return problem('ERR_GATEWAY_BAD_REQUEST', 'malformed HTTP request: chunk extensions too large')
    default: {
      // llhttp's reason, e.g. "Parse Error: Invalid method encountered".
      const reason = (err as { reason?: unknown }).reason
      const what = typeof reason === 'string' && reason ? reason : err.message.replace(/^Parse Error:\s*/, '')
      return problem('ERR_GATEWAY_BAD_REQUEST', `malformed HTTP request: ${what}`)
    }
  }
}

/** A raw HTTP/1.1 answer with a problem+json body and `Connection: close`. */
export function rawProblem(err: InitlessError): string {
  const { status, headers, body } = renderProblem(err, requestIdFrom(undefined))
  const lines = [`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}`]
  for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`)
  lines.push(`content-length: ${Buffer.byteLength(body)}`, 'connection: close', '', body)
  return lines.join('\r\n')
}

/**
 * Close a connection the way that lets the client read what was written: end our side, drop what
 * the client still sends, close once it closes its side or after LINGER_MS.
 */
export function lingerClose(socket: Socket, lingerMs = LINGER_MS): void {
  socket.end()
  const timer = setTimeout(() => socket.destroy(), lingerMs)
  timer.unref()
  socket.once('close', () => clearTimeout(timer))
  socket.once('end', () => socket.destroy())
  // Node's parser reads whatever arrives (and reports it as more client errors, ignored below).
  socket.resume()
}

export interface ClientGuard {
  /** The request listener to serve with: requests on refused connections are dropped. */
  wrap(listener: RequestListener): RequestListener
  /** Install the connection cap and the client-error answers on `server`. */
  install(server: Server): void
  /** Connections currently open per source address (tests, metrics). */
  connections(): ReadonlyMap<string, number>
}

export function createClientGuard(opts: ClientGuardOptions, logger: Logger): ClientGuard {
  const log = logger.child({ module: 'client-guard' })
  const open = new Map<string, number>()
  /** Connections answered and lingering: nothing more is served or written on them. */
  const answered = new WeakSet<Socket>()

  function refuse(socket: Socket, err: InitlessError): void {
    answered.add(socket)
    if (socket.writable) socket.write(rawProblem(err))
    lingerClose(socket)
  }

  /** Answer a parsed request with a problem and close the connection once it is sent. */
  function answer(res: ServerResponse, err: InitlessError): void {
    const { status, headers, body } = renderProblem(err, requestIdFrom(undefined))
    log.info({ code: err.code, source: res.socket?.remoteAddress, detail: err.message }, 'request refused')
    res.shouldKeepAlive = false
    res.writeHead(status, { ...headers, 'content-length': Buffer.byteLength(body), connection: 'close' })
    res.end(body)
  }

  return {
    wrap(listener) {
      return (req: IncomingMessage, res: ServerResponse) => {
        if (answered.has(req.socket)) return void req.socket.destroy()
        const hosts = hostHeaders(req.rawHeaders)
        // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host header. HTTP/1.0 clients send one
        // too, and the app needs it (without one, @hono/node-server answers a bare 400).
        if (hosts !== 1)
          return answer(
            res,
            new InitlessError(
              'ERR_GATEWAY_BAD_REQUEST',
              hosts ? `${hosts} Host headers: exactly one is allowed` : 'a request needs a Host header',
            ),
          )
        if (req.httpVersionMajor !== 1)
          return answer(
            res,
            new InitlessError(
              'ERR_GATEWAY_BAD_REQUEST',
              `HTTP/${req.httpVersion} is not supported: use HTTP/1.1`,
            ),
          )
        // Only the origin form (`/path?query`): `*` and absolute URLs are for proxies.
        if (!req.url?.startsWith('/'))
          return answer(
            res,
            new InitlessError(
              'ERR_GATEWAY_BAD_REQUEST',
              `request target ${JSON.stringify((req.url ?? '').slice(0, 100))} is not a path (origin form)`,
            ),
          )
        drainAfterAnswer(req, res)
        listener(req, res)
      }
    },

    install(server) {
      // Before Node's own connection handling: a refused socket is answered before any request.
      server.prependListener('connection', (socket: Socket) => {
        const source = socket.remoteAddress ?? ''
        const count = (open.get(source) ?? 0) + 1
        if (opts.maxConnectionsPerClient > 0 && count > opts.maxConnectionsPerClient) {
          log.warn(
            { source, limit: opts.maxConnectionsPerClient },
            'connection refused: too many from one source',
          )
          return refuse(
            socket,
            new InitlessError(
              'ERR_GATEWAY_TOO_MANY_CONNECTIONS',
              `more than ${opts.maxConnectionsPerClient} connections open from ${source}`,
              { details: { retryAfterS: 1 } },
            ),
          )
        }
        open.set(source, count)
        socket.once('close', () => {
          const left = (open.get(source) ?? 1) - 1
          if (left > 0) open.set(source, left)
          else open.delete(source)
        })
      })

      // Without these listeners Node drops a CONNECT's connection without a word and answers an
      // unknown Expect with a bare 417.
      server.on('connect', (_req: IncomingMessage, socket: Socket) =>
        refuse(
          socket,
          new InitlessError(
            'ERR_GATEWAY_METHOD_NOT_ALLOWED',
            'CONNECT is not supported: the gateway is not a proxy',
          ),
        ),
      )
      server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) =>
        answer(
          res,
          new InitlessError(
            'ERR_GATEWAY_EXPECTATION_FAILED',
            `unsupported Expect: ${JSON.stringify(req.headers.expect)} (only 100-continue)`,
          ),
        ),
      )

      server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
        if (answered.has(socket)) return
        // A reset or a socket error: nobody to answer.
        if (err.code === 'ECONNRESET' || err.code === 'EPIPE' || !socket.writable) {
          answered.add(socket)
          return void socket.destroy()
        }
        // A response already under way on this connection cannot be followed by another one.
        const inFlight = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage
        if (inFlight?.headersSent) {
          answered.add(socket)
          return void socket.destroy()
        }
        const problem = clientErrorProblem(err, opts.maxHeaderBytes)
        log.info(
          { code: problem.code, source: socket.remoteAddress, detail: problem.message },
          'client error',
        )
        refuse(socket, problem)
      })
    },

    connections: () => open,
  }
}

/** The request a keep-alive connection is serving now (drainAfterAnswer). */
const currentRequest = new WeakMap<Socket, IncomingMessage>()

/**
 * An answer sent before its request's body was read whole (a 413, a refusal) must not cut the
 * client off while it is still sending, or the client never reads it: Node destroys such a
 * connection once the answer is written (`destroySoon`), resetting it. Instead the rest of the
 * body is read and dropped; a connection that closes after the answer lingers (lingerClose).
 */
function drainAfterAnswer(req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket as Socket & { destroySoon?: (this: Socket) => void }
  if (!currentRequest.has(socket)) {
    const destroySoon = socket.destroySoon?.bind(socket)
    if (!destroySoon) return
    socket.destroySoon = () => {
      const current = currentRequest.get(socket)
      if (!current || current.complete) return destroySoon()
      current.resume()
      lingerClose(socket)
    }
  }
  currentRequest.set(socket, req)
  res.once('finish', () => {
    if (!req.complete) req.resume()
  })
}

/** How many Host headers a request carries (Node keeps only the first in `headers`). */
function hostHeaders(rawHeaders: readonly string[]): number {
  let n = 0
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === 'host') n++
  return n
}
