/**
 * HTTP probes against an instance's own address (never through a proxy: a SYN sent before the
 * network is up would be retried only after 1 s, platform.md). Used for readiness at bake time and
 * after every restore, and for warm-up requests.
 */
import { request } from 'node:http'
import { InitlessError } from '../../shared/errors.ts'

export interface HttpAnswer {
  readonly status: number
  readonly body: string
}

/** One HTTP request with its own connection (`Connection: close`: a checkpoint must find none open). */
export function httpOnce(
  host: string,
  port: number,
  path: string,
  opts: { method?: string; body?: string; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host,
        port,
        path,
        method: opts.method ?? 'GET',
        agent: false,
        headers: { connection: 'close', ...opts.headers },
        timeout: opts.timeoutMs ?? 5000,
      },
      (res) => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (c: Buffer) => {
          // Keep at most 1 MiB: probes only look for a substring near the start.
          if (size < 1 << 20) chunks.push(c)
          size += c.length
        })
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
        )
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error(`no answer within ${opts.timeoutMs ?? 5000} ms`)))
    req.on('error', reject)
    req.end(opts.body)
  })
}

export interface ReadinessOptions {
  readonly path: string
  /** Substring the body must contain ('' accepts any 2xx). */
  readonly expect: string
  readonly timeoutMs: number
  /** Pause between attempts after a refused connection (asked again before every pause). */
  readonly intervalMs: number | (() => number)
  /** Give up on one attempt after this long (default 10 s; asked before every attempt). */
  readonly attemptTimeoutMs?: () => number
  /** Stops waiting early, e.g. when the process has exited. */
  readonly isAlive?: () => boolean
  readonly signal?: AbortSignal
}

/**
 * Poll until `GET path` answers 2xx with `expect` in the body. Resolves with the number of ms waited.
 * Rejects with ERR_INSTANCE_NOT_READY (timeout) or ERR_INSTANCE_DIED (isAlive turned false).
 */
export async function waitReady(host: string, port: number, opts: ReadinessOptions): Promise<number> {
  const started = performance.now()
  const deadline = started + opts.timeoutMs
  let last = 'no attempt'
  for (;;) {
    if (opts.signal?.aborted) throw new InitlessError('ERR_INSTANCE_NOT_READY', 'readiness wait aborted')
    try {
      const remaining = Math.max(1, deadline - performance.now())
      const attempt = opts.attemptTimeoutMs?.() ?? 10_000
      const res = await httpOnce(host, port, opts.path, { timeoutMs: Math.min(remaining, attempt) })
      if (res.status >= 200 && res.status < 300 && res.body.includes(opts.expect)) {
        return performance.now() - started
      }
      last = `HTTP ${res.status}, body ${JSON.stringify(res.body.slice(0, 120))}`
    } catch (err) {
      last = err instanceof Error ? err.message : String(err)
    }
    if (opts.isAlive && !opts.isAlive()) {
      throw new InitlessError(
        'ERR_INSTANCE_DIED',
        `the process exited before it was ready (last probe: ${last})`,
      )
    }
    if (performance.now() >= deadline) {
      throw new InitlessError(
        'ERR_INSTANCE_NOT_READY',
        `GET ${opts.path} on ${host}:${port} did not answer 2xx containing ${JSON.stringify(opts.expect)} within ${opts.timeoutMs} ms (last: ${last})`,
      )
    }
    const pause = typeof opts.intervalMs === 'function' ? opts.intervalMs() : opts.intervalMs
    await new Promise((r) => setTimeout(r, pause))
  }
}
