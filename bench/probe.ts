/**
 * One HTTP request on a fresh connection (`agent: false`), timed with node:http: time to first byte
 * is taken at the 'response' event (status line and headers parsed), before the body is read.
 * Nothing is polled: one request, one answer.
 */
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'

export interface ProbeRequest {
  readonly method: string
  readonly path: string
  readonly body?: string
  readonly headers?: Readonly<Record<string, string>>
}

export interface ProbeResult {
  /** Request start (before the connection is opened) -> 'response' event, in ms. */
  readonly ttfbMs: number
  /** Request start -> last byte of the body, in ms. */
  readonly totalMs: number
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly body: string
}

/** Send `req` to `host:port` on its own connection and time it. Rejects on socket errors and timeouts. */
export function probe(
  host: string,
  port: number,
  req: ProbeRequest,
  timeoutMs = 120_000,
): Promise<ProbeResult> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { connection: 'close', ...req.headers }
    if (req.body !== undefined) headers['content-length'] = String(Buffer.byteLength(req.body))
    const started = performance.now()
    const r = httpRequest(
      { host, port, method: req.method, path: req.path, headers, agent: false },
      (res) => {
        const ttfbMs = performance.now() - started
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () =>
          resolve({
            ttfbMs,
            totalMs: performance.now() - started,
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8'),
          }),
        )
      },
    )
    r.setTimeout(timeoutMs, () =>
      r.destroy(new Error(`${req.method} ${req.path}: no answer in ${timeoutMs} ms`)),
    )
    r.on('error', reject)
    r.end(req.body)
  })
}
