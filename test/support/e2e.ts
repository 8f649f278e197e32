/**
 * End-to-end stack for tests: the REAL executor and gateway processes (`node
 * dist/executor/main.js` and `dist/gateway/main.js`, as production runs them), started from the repo root on the default state dir (so
 * the sample snapshots baked there are reused), isolated from everything else on the shared Redis
 * by a unique queue name, registry key prefix and host id. Their output is collected, parsed as
 * pino JSON lines and shown when a test fails. Plus a small node:http client that can send raw
 * paths and streamed (chunked) bodies.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { createServer } from 'node:net'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { builtEntry, type ProcessName } from '../../cli/launcher.ts'
import type { InstanceRecord } from '../../shared/contracts.ts'
import { createRedis, deleteKeys } from '../../shared/redis.ts'
import { REDIS_URL } from './integration.ts'

export const ROOT = join(import.meta.dirname, '..', '..')
export const STATE_DIR = '/var/lib/initless'
export const RUNC_ROOT = '/run/initless/runc'

/** One pino line of a process's output. */
export interface LogRecord {
  readonly msg?: string
  readonly level?: number
  readonly [field: string]: unknown
}

export interface Exit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

export interface ManagedProcess {
  readonly name: string
  readonly child: ChildProcess
  /** Everything written to stdout and stderr so far. */
  output(): string
  /** A position in the output: pass it to records() to see only what came after. */
  mark(): number
  /** The JSON log lines written after `from` (a mark), parsed; other lines are skipped. */
  records(from?: number): LogRecord[]
  /** Resolves with the first record after `from` that matches; fails early if the process exits. */
  waitForLog(match: (r: LogRecord) => boolean, timeoutMs: number, from?: number): Promise<LogRecord>
  isRunning(): boolean
  /** Signal it and wait for its exit; SIGKILL after `timeoutMs` (the exit then says so). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<Exit>
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms))

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n')
}

/**
 * Spawn `node dist/<entry>/main.js` from the repo root and collect its output. `wrap` runs it
 * through another command that execs it (`nsenter --net=...`: another host's network).
 */
export function startProcess(
  name: string,
  entry: ProcessName,
  env: Record<string, string>,
  wrap: readonly string[] = [],
): ManagedProcess {
  const argv = [...wrap, process.execPath, builtEntry(entry)]
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let text = ''
  child.stdout?.on('data', (d: Buffer) => (text += d.toString()))
  child.stderr?.on('data', (d: Buffer) => (text += d.toString()))
  let exit: Exit | undefined
  const exited = new Promise<Exit>((resolve) =>
    child.once('exit', (code, signal) => resolve((exit = { code, signal }))),
  )
  // 'exit' may come before the last of the output has been read; 'close' comes after it. Bounded:
  // a child of its own could hold the pipe open.
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()))
  const drained = () => Promise.race([closed, delay(2_000)])
  const records = (from = 0): LogRecord[] => {
    const out: LogRecord[] = []
    for (const line of text.slice(from).split('\n')) {
      if (!line.startsWith('{')) continue
      try {
        out.push(JSON.parse(line) as LogRecord)
      } catch {
        // a line still being written, or not JSON
      }
    }
    return out
  }
  let stopping: Promise<Exit> | undefined
  return {
    name,
    child,
    output: () => text,
    mark: () => text.length,
    records,
    async waitForLog(match, timeoutMs, from = 0) {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const found = records(from).find(match)
        if (found) return found
        if (exit) {
          await drained() // its last lines may still be on their way
          const last = records(from).find(match)
          if (last) return last
          throw new Error(
            `${name} exited (${exit.code ?? exit.signal}) while waiting for a log line:\n${tail(text, 60)}`,
          )
        }
        if (Date.now() > deadline)
          throw new Error(`${name}: no matching log line within ${timeoutMs} ms:\n${tail(text, 60)}`)
        await delay(100)
      }
    },
    isRunning: () => exit === undefined,
    stop(signal = 'SIGTERM', timeoutMs = 60_000) {
      stopping ??= (async () => {
        if (exit) return exit
        child.kill(signal)
        const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
        const result = await exited
        clearTimeout(timer)
        await drained() // its last lines, for whoever reads them next
        return result
      })()
      return stopping
    },
  }
}

/** A TCP port that was free a moment ago (bound on 127.0.0.1:0, then released). */
export async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const address = server.address()
  await new Promise((r) => server.close(r))
  if (!address || typeof address === 'string') throw new Error('no port')
  return address.port
}

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

/** Server-Timing as name -> duration (ms; undefined for a metric without `dur`), in order. */
export function parseServerTiming(header: string | string[] | undefined): Map<string, number | undefined> {
  const out = new Map<string, number | undefined>()
  const text = Array.isArray(header) ? header.join(', ') : (header ?? '')
  for (const part of text.split(',')) {
    const [name = '', ...params] = part.split(';').map((s) => s.trim())
    if (!name) continue
    const dur = params.find((p) => p.startsWith('dur='))
    out.set(name, dur === undefined ? undefined : Number(dur.slice(4)))
  }
  return out
}

export function netnsNames(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean)
}

export interface E2eStack {
  readonly port: number
  readonly adminToken: string
  readonly env: Readonly<Record<string, string>>
  readonly executor: ManagedProcess
  readonly gateway: ManagedProcess
  /** A request to the gateway. */
  request(method: string, path: string, opts?: Parameters<typeof http>[3]): ReturnType<typeof http>
  /** An /admin call with the bearer token; the body is parsed as JSON. */
  admin<T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>
  /** GET /admin/instances, optionally of one function. */
  instances(fn?: string): Promise<InstanceRecord[]>
  /** Poll /admin/instances of `fn` until `isDone` holds; resolves with that list. */
  waitForInstances(
    fn: string,
    isDone: (list: InstanceRecord[]) => boolean,
    timeoutMs: number,
  ): Promise<InstanceRecord[]>
  /** POST /admin/functions/<fn>/scale {instances: 0} and wait until none is listed. */
  scaleToZero(fn: string, timeoutMs?: number): Promise<void>
  /** The last lines of both processes' output, for failure reports. */
  logs(lines?: number): string
  /** SIGTERM the gateway, then the executor; delete the test's Redis keys. Idempotent. */
  stop(): Promise<{ gateway: Exit; executor: Exit }>
}

/**
 * Start an executor and a gateway sharing a fresh queue, key prefix and host id. Resolves once the
 * executor has prepared every function (built and baked if missing: minutes on a fresh machine)
 * and the gateway answers /readyz with 200. On failure both are stopped and the error holds their
 * output.
 */
export async function startE2eStack(
  opts: { env?: Record<string, string>; prepareTimeoutMs?: number } = {},
): Promise<E2eStack> {
  const tag = randomBytes(4).toString('hex')
  const port = await freePort()
  const adminToken = randomBytes(24).toString('hex')
  const queueName = `test-e2e-${randomUUID()}`
  const prefix = `test-e2e-${tag}`
  const env: Record<string, string> = {
    INITLESS_QUEUE_NAME: queueName,
    INITLESS_KEY_PREFIX: prefix,
    INITLESS_HOST_ID: `e2e-${tag}`,
    INITLESS_GATEWAY_HOST: '127.0.0.1',
    INITLESS_GATEWAY_PORT: String(port),
    INITLESS_ADMIN_TOKEN: adminToken,
    INITLESS_LOG_LEVEL: 'info',
    INITLESS_REDIS_URL: REDIS_URL,
    ...opts.env,
  }
  // The default state dir and functions dir: never inherit overrides from the caller's shell.
  for (const key of ['INITLESS_STATE_DIR', 'INITLESS_FUNCTIONS_DIR', 'INITLESS_RUNC_ROOT'])
    if (!(key in env)) env[key] = ''
  const executor = startProcess('executor', 'executor', env)
  const gateway = startProcess('gateway', 'gateway', env)
  const logs = (lines = 80) =>
    `--- executor ---\n${tail(executor.output(), lines)}\n--- gateway ---\n${tail(gateway.output(), lines)}`

  const request: E2eStack['request'] = (method, path, o) => http(port, method, path, o)
  const admin = async <T>(method: string, path: string, body?: unknown) => {
    const res = await request(method, `/admin${path}`, {
      headers: {
        authorization: `Bearer ${adminToken}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      timeoutMs: 10_000,
    })
    return { status: res.status, body: JSON.parse(res.text) as T }
  }
  const instances = async (fn?: string) => {
    const res = await admin<{ instances: InstanceRecord[] }>('GET', '/instances')
    if (res.status !== 200) throw new Error(`GET /admin/instances: ${res.status} ${JSON.stringify(res.body)}`)
    return res.body.instances.filter((i) => fn === undefined || i.fn === fn)
  }
  const waitForInstances: E2eStack['waitForInstances'] = async (fn, isDone, timeoutMs) => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const list = await instances(fn)
      if (isDone(list)) return list
      if (Date.now() > deadline)
        throw new Error(`${fn}: instances still ${JSON.stringify(list)} after ${timeoutMs} ms`)
      await delay(100)
    }
  }

  let stopping: Promise<{ gateway: Exit; executor: Exit }> | undefined
  const stack: E2eStack = {
    port,
    adminToken,
    env,
    executor,
    gateway,
    request,
    admin,
    instances,
    waitForInstances,
    async scaleToZero(fn, timeoutMs = 30_000) {
      const res = await admin<{ action: string }>('POST', `/functions/${fn}/scale`, { instances: 0 })
      if (res.status !== 202)
        throw new Error(`scale ${fn} to zero: ${res.status} ${JSON.stringify(res.body)}`)
      await waitForInstances(fn, (list) => list.length === 0, timeoutMs)
    },
    logs,
    stop() {
      stopping ??= (async () => {
        // The gateway first: it drains its requests; then the executor stops every instance.
        const gw = await gateway.stop('SIGTERM', 30_000)
        agent.destroy()
        const ex = await executor.stop('SIGTERM', 60_000)
        const redis = createRedis(REDIS_URL, { name: 'initless-e2e-cleanup' })
        try {
          await deleteKeys(redis, [`${prefix}:*`, `bull:${queueName}:*`])
        } finally {
          redis.disconnect()
        }
        return { gateway: gw, executor: ex }
      })()
      return stopping
    },
  }

  try {
    await Promise.all([
      executor.waitForLog((r) => r.msg === 'functions prepared', opts.prepareTimeoutMs ?? 600_000),
      gateway.waitForLog((r) => r.msg === 'gateway listening', 60_000),
    ])
    const deadline = Date.now() + 30_000
    for (;;) {
      const res = await request('GET', '/readyz', { timeoutMs: 5_000 }).catch(() => undefined)
      if (res?.status === 200) break
      if (Date.now() > deadline) throw new Error(`gateway /readyz never answered 200 (last: ${res?.status})`)
      await delay(100)
    }
  } catch (err) {
    await stack.stop().catch(() => undefined)
    throw new Error(`${err instanceof Error ? err.message : String(err)}\n${logs()}`)
  }
  return stack
}
