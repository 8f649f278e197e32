/**
 * The one stack launcher: starts initless's own processes the way production runs them (`node
 * dist/<process>/main.js`, the output of `npm run build`), collects their output, waits until the
 * gateway is ready and stops them in order. Used by `initless up`, the integration tests
 * (test/support/e2e.ts) and the benchmarks (bench/stack.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import type { InstanceRecord } from '../shared/contracts.ts'
import { errorMessage, InitlessError } from '../shared/errors.ts'
import { packageRoot } from '../shared/package-root.ts'
import { createRedis, deleteKeys } from '../shared/redis.ts'

export type ProcessName = 'gateway' | 'executor' | 'cli'

/** Where the build puts a process's entry point under an install's root. */
export function entryPath(root: string, name: ProcessName): string {
  return join(root, 'dist', name, 'main.js')
}

/** The compiled entry of a process; a clear error when the build is missing. */
export function builtEntry(name: ProcessName): string {
  const entry = entryPath(packageRoot(), name)
  if (!existsSync(entry))
    throw new InitlessError('ERR_CONFIG_INVALID', `${entry} is missing: run \`npm run build\` first`)
  return entry
}

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
  /** Everything written to stdout and stderr so far ('' unless keepOutput). */
  output(): string
  /** A position in the output: pass it to records() to see only what came after. */
  mark(): number
  /** The JSON log lines written after `from` (a mark), parsed; other lines are skipped. */
  records(from?: number): LogRecord[]
  /** Resolves with the first record after `from` that matches; fails early if the process exits. */
  waitForLog(match: (r: LogRecord) => boolean, timeoutMs: number, from?: number): Promise<LogRecord>
  isRunning(): boolean
  /** Resolves when the process has exited. */
  exited(): Promise<Exit>
  /** Signal it and wait for its exit; SIGKILL after `timeoutMs` (the exit then says so). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<Exit>
}

export interface ProcessOptions {
  /** Set over this process's environment. */
  readonly env?: Readonly<Record<string, string>>
  /** A command that execs the process (`nsenter --net=...`: another host's network). */
  readonly wrap?: readonly string[]
  /** Each output line as it comes. */
  readonly onLine?: (line: string) => void
  /** Keep the whole output for output()/records() (default true; a long-running `up` does not). */
  readonly keepOutput?: boolean
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms))

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n')
}

/** Spawn `node dist/<entry>/main.js` from the package root and collect its output. */
export function startProcess(name: string, entry: ProcessName, opts: ProcessOptions = {}): ManagedProcess {
  const root = packageRoot()
  const argv = [...(opts.wrap ?? []), process.execPath, builtEntry(entry)]
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: root,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let text = ''
  const keep = opts.keepOutput ?? true
  for (const stream of [child.stdout, child.stderr]) {
    if (keep) stream?.on('data', (d: Buffer) => (text += d.toString()))
    if (stream && opts.onLine) createInterface({ input: stream }).on('line', opts.onLine)
  }
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
    exited: () => exited,
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

/** A stack kept apart from everything else on one Redis and host (tests, benchmarks). */
export interface IsolatedStack {
  readonly env: Record<string, string>
  readonly port: number
  readonly adminToken: string
  readonly hostId: string
  /** The Redis keys it leaves: delete them after it stopped. */
  readonly redisKeys: readonly string[]
}

/**
 * The environment of an isolated stack: its own queue name, registry key prefix, host id, port
 * (on 127.0.0.1) and admin token; `kind` starts their names (`test-e2e-…`, `bench-…`).
 */
export async function isolatedStack(kind: string, redisUrl: string): Promise<IsolatedStack> {
  const tag = randomBytes(4).toString('hex')
  const port = await freePort()
  const adminToken = randomBytes(24).toString('hex')
  const queueName = `${kind}-${randomUUID()}`
  const prefix = `${kind}-${tag}`
  const hostId = `${kind}-${tag}`
  return {
    env: {
      INITLESS_QUEUE_NAME: queueName,
      INITLESS_KEY_PREFIX: prefix,
      INITLESS_HOST_ID: hostId,
      INITLESS_GATEWAY_HOST: '127.0.0.1',
      INITLESS_GATEWAY_PORT: String(port),
      INITLESS_ADMIN_TOKEN: adminToken,
      INITLESS_REDIS_URL: redisUrl,
      INITLESS_ASYNC_PREFIX: `{${prefix}}`,
    },
    port,
    adminToken,
    hostId,
    redisKeys: [`${prefix}:*`, `bull:${queueName}:*`, `{${prefix}}:*`],
  }
}

export interface StackOptions {
  /** Set over both processes' environment. */
  readonly env?: Readonly<Record<string, string>>
  /** The gateway's base URL (default from INITLESS_GATEWAY_HOST/PORT of `env` or process.env). */
  readonly url?: string
  /** Bearer token for admin(). */
  readonly adminToken?: string
  /** Each output line of a process as it comes. */
  readonly onLine?: (name: 'executor' | 'gateway', line: string) => void
  /** See ProcessOptions.keepOutput. */
  readonly keepOutput?: boolean
  /**
   * First wait this long for the executor's `functions prepared` log line (it must log at info).
   * Without it only the gateway's /readyz is waited for.
   */
  readonly prepareTimeoutMs?: number
  /** How long /readyz may take to answer 200 (after the preparation, when waited for). */
  readonly readyTimeoutMs?: number
  /** Called with stop() as soon as the processes exist (so that a signal handler can run it). */
  readonly defer?: (stop: () => Promise<unknown>) => void
  /** Deleted from this Redis after both processes stopped (an isolated stack's keys). */
  readonly cleanup?: { readonly redisUrl: string; readonly patterns: readonly string[] }
  /** SIGKILL after this long, in ms. Default 30 s for the gateway, 60 s for the executor. */
  readonly stopTimeoutMs?: { readonly gateway?: number; readonly executor?: number }
}

export interface Stack {
  readonly url: string
  readonly executor: ManagedProcess
  readonly gateway: ManagedProcess
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
  /** The last lines of both processes' output, for failure reports. */
  logs(lines?: number): string
  /** SIGTERM the gateway (it drains), then the executor (it stops every instance). Idempotent. */
  stop(): Promise<{ gateway: Exit; executor: Exit }>
}

/** The gateway's URL from the environment it is given. */
export function gatewayUrl(env: Readonly<Record<string, string | undefined>>): string {
  const host = env.INITLESS_GATEWAY_HOST ?? '127.0.0.1'
  const port = env.INITLESS_GATEWAY_PORT ?? '8080'
  return env.INITLESS_GATEWAY_URL ?? `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}`
}

/**
 * Start the executor and the gateway; resolves once the gateway answers /readyz with 200. On
 * failure both are stopped and the error holds their last output.
 */
export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const env = { ...opts.env }
  const url = opts.url ?? gatewayUrl({ ...process.env, ...env })
  const proc = (name: 'executor' | 'gateway') =>
    startProcess(name, name, {
      env,
      ...(opts.onLine ? { onLine: (line: string) => opts.onLine?.(name, line) } : {}),
      ...(opts.keepOutput === undefined ? {} : { keepOutput: opts.keepOutput }),
    })
  const executor = proc('executor')
  const gateway = proc('gateway')
  const logs = (lines = 80) =>
    `--- executor ---\n${tail(executor.output(), lines)}\n--- gateway ---\n${tail(gateway.output(), lines)}`

  const admin = async <T>(method: string, path: string, body?: unknown) => {
    const res = await fetch(`${url}/admin${path}`, {
      method,
      headers: {
        ...(opts.adminToken ? { authorization: `Bearer ${opts.adminToken}` } : {}),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(10_000),
    })
    return { status: res.status, body: JSON.parse(await res.text()) as T }
  }
  const instances = async (fn?: string) => {
    const res = await admin<{ instances: InstanceRecord[] }>('GET', '/instances')
    if (res.status !== 200) throw new Error(`GET /admin/instances: ${res.status} ${JSON.stringify(res.body)}`)
    return res.body.instances.filter((i) => fn === undefined || i.fn === fn)
  }

  let stopping: Promise<{ gateway: Exit; executor: Exit }> | undefined
  const stack: Stack = {
    url,
    executor,
    gateway,
    admin,
    instances,
    async waitForInstances(fn, isDone, timeoutMs) {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const list = await instances(fn)
        if (isDone(list)) return list
        if (Date.now() > deadline)
          throw new Error(`${fn}: instances still ${JSON.stringify(list)} after ${timeoutMs} ms`)
        await delay(100)
      }
    },
    logs,
    stop() {
      stopping ??= (async () => {
        const gw = await gateway.stop('SIGTERM', opts.stopTimeoutMs?.gateway ?? 30_000)
        const ex = await executor.stop('SIGTERM', opts.stopTimeoutMs?.executor ?? 60_000)
        if (opts.cleanup) {
          const redis = createRedis(opts.cleanup.redisUrl, { name: 'initless-stack-cleanup' })
          try {
            await deleteKeys(redis, opts.cleanup.patterns)
          } finally {
            redis.disconnect()
          }
        }
        return { gateway: gw, executor: ex }
      })()
      return stopping
    },
  }
  opts.defer?.(() => stack.stop())

  try {
    if (opts.prepareTimeoutMs !== undefined)
      await executor.waitForLog((r) => r.msg === 'functions prepared', opts.prepareTimeoutMs)
    await waitReady(stack, opts.readyTimeoutMs ?? 30_000)
  } catch (err) {
    await stack.stop().catch(() => undefined)
    if (opts.keepOutput === false) throw err // its output went to onLine
    throw new Error(`${errorMessage(err)}\n${logs()}`, { cause: err })
  }
  return stack
}

async function waitReady(stack: Stack, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last: number | string = 'no answer'
  for (;;) {
    const status = await fetch(`${stack.url}/readyz`, { signal: AbortSignal.timeout(5_000) }).then(
      (r) => r.status,
      (err: unknown) => errorMessage(err),
    )
    if (status === 200) return
    last = status
    if (!stack.executor.isRunning() || !stack.gateway.isRunning())
      throw new InitlessError(
        'ERR_INTERNAL',
        `the ${stack.executor.isRunning() ? 'gateway' : 'executor'} exited during start-up`,
      )
    if (Date.now() > deadline)
      throw new InitlessError(
        'ERR_GATEWAY_TIMEOUT',
        `the gateway at ${stack.url} was not ready within ${timeoutMs} ms (last: ${last})`,
      )
    await delay(200)
  }
}
