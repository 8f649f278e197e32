/**
 * End-to-end stack for tests: the REAL executor and gateway processes (`node
 * dist/executor/main.js` and `dist/gateway/main.js`, as production runs them), started from the repo root on the default state dir (so
 * the sample snapshots baked there are reused), isolated from everything else on the shared Redis
 * by a unique queue name, registry key prefix and host id. Their output is collected, parsed as
 * pino JSON lines and shown when a test fails. Plus a small node:http client that can send raw
 * paths and streamed (chunked) bodies.
 */
import { execFileSync } from 'node:child_process'
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { isolatedStack, startStack, type Exit, type Stack } from '../../cli/launcher.ts'
import { REDIS_URL } from './integration.ts'

export { freePort, startProcess, type Exit, type LogRecord, type ManagedProcess } from '../../cli/launcher.ts'
export { parseServerTiming } from '../../shared/server-timing.ts'

export const ROOT = join(import.meta.dirname, '..', '..')
export const STATE_DIR = '/var/lib/initless'
export { DEFAULT_RUNC_ROOT as RUNC_ROOT } from '../../executor/config.ts'

export interface HttpResponse {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly body: Buffer
  readonly text: string
}

/** Enough sockets for the concurrency tests (the default Agent would queue past its pool). */
export const agent = new Agent({ keepAlive: true, maxSockets: 200 })

/**
 * One HTTP request to 127.0.0.1:`port`. `path` is sent as is (no URL normalisation). A Buffer body
 * gets a Content-Length unless the headers say otherwise; a stream body goes out chunked.
 */
export function http(
  port: number,
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; body?: Buffer | string | Readable; timeoutMs?: number } = {},
): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: '127.0.0.1', port, method, path, headers: opts.headers ?? {}, agent },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('aborted', () => reject(new Error(`${method} ${path}: response aborted`)))
        res.on('end', () => {
          if (!res.complete) return reject(new Error(`${method} ${path}: response cut off`))
          const body = Buffer.concat(chunks)
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8') })
        })
      },
    )
    req.setTimeout(opts.timeoutMs ?? 120_000, () => req.destroy(new Error(`${method} ${path}: timed out`)))
    req.on('error', reject)
    const body = opts.body
    if (body === undefined) req.end()
    else if (typeof body === 'string' || Buffer.isBuffer(body)) req.end(body)
    else {
      body.on('error', (err) => req.destroy(err))
      body.pipe(req)
    }
  })
}

export function netnsNames(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean)
}

export interface E2eStack extends Omit<Stack, 'stop'> {
  readonly port: number
  readonly adminToken: string
  readonly env: Readonly<Record<string, string>>
  /** A request to the gateway. */
  request(method: string, path: string, opts?: Parameters<typeof http>[3]): ReturnType<typeof http>
  /** POST /admin/functions/<fn>/scale {instances: 0} and wait until none is listed. */
  scaleToZero(fn: string, timeoutMs?: number): Promise<void>
  /** SIGTERM the gateway, then the executor; delete the test's Redis keys. Idempotent. */
  stop(): Promise<{ gateway: Exit; executor: Exit }>
}

/**
 * Start an executor and a gateway (cli/launcher.ts) sharing a fresh queue, key prefix and host id.
 * Resolves once the executor has prepared every function (built and baked if missing: minutes on a
 * fresh machine) and the gateway answers /readyz with 200. On failure both are stopped and the
 * error holds their output.
 */
export async function startE2eStack(
  opts: { env?: Record<string, string>; prepareTimeoutMs?: number } = {},
): Promise<E2eStack> {
  const iso = await isolatedStack('test-e2e', REDIS_URL)
  const env: Record<string, string> = { ...iso.env, INITLESS_LOG_LEVEL: 'info', ...opts.env }
  // The default state dir and functions dir: never inherit overrides from the caller's shell.
  for (const key of ['INITLESS_STATE_DIR', 'INITLESS_FUNCTIONS_DIR', 'INITLESS_RUNC_ROOT'])
    if (!(key in env)) env[key] = ''
  const stack = await startStack({
    env,
    adminToken: iso.adminToken,
    prepareTimeoutMs: opts.prepareTimeoutMs ?? 600_000,
    cleanup: { redisUrl: REDIS_URL, patterns: iso.redisKeys },
  })
  return {
    ...stack,
    port: iso.port,
    adminToken: iso.adminToken,
    env,
    request: (method, path, o) => http(iso.port, method, path, o),
    async scaleToZero(fn, timeoutMs = 30_000) {
      const res = await stack.admin<{ action: string }>('POST', `/functions/${fn}/scale`, { instances: 0 })
      if (res.status !== 202)
        throw new Error(`scale ${fn} to zero: ${res.status} ${JSON.stringify(res.body)}`)
      await stack.waitForInstances(fn, (list) => list.length === 0, timeoutMs)
    },
    async stop() {
      const exits = await stack.stop()
      agent.destroy()
      return exits
    },
  }
}
