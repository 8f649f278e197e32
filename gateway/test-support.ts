/**
 * Helpers for the gateway's unit tests (and the integration tests under test/): manifests, a real
 * echo HTTP server to stand in for an instance, and an app wired to the in-memory fakes. Not used
 * by production code.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { gzipSync } from 'node:zlib'
import type { ColdStartPhases, InstanceAddress, RestoreJobData } from '../shared/contracts.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { manifestSchema, type Manifest } from '../shared/manifest.ts'
import { createFakeRegistry, type FakeRegistry } from '../shared/registry-fake.ts'
import type { InstanceRegistry } from '../shared/registry.ts'
import { createGateway, type Gateway, type GatewayAppDeps } from './app.ts'
import { createStaticCatalog } from './catalog.ts'
import type { Forwarder } from './forwarder.ts'
import { createInstancePool, type InstancePool, type InstancePoolDeps } from './instance-pool.ts'
import { createFakeRestoreQueue, type FakeRestoreQueue } from '../shared/restore-queue-fake.ts'
import { createUpstreamAgents, type UpstreamAgents } from './upstream-agents.ts'
import { createWebForwarder } from './web-forwarder.ts'
import type { LifecycleRouteDeps } from './routes/lifecycle.ts'

export interface ManifestOptions {
  readonly concurrency?: number
  readonly maxInstances?: number
  readonly queueLimit?: number
  /** timeouts.start, e.g. '2s'. */
  readonly start?: string
  /** timeouts.request, e.g. '2s'. */
  readonly request?: string
  /** auth.type. Default none. */
  readonly auth?: 'none' | 'key'
  readonly rateLimit?: { readonly perFunction?: number; readonly perClient?: number; readonly burst?: number }
}

export function testManifest(name: string, o: ManifestOptions = {}): Manifest {
  return manifestSchema.parse({
    name,
    port: 8080,
    scaling: {
      concurrency: o.concurrency ?? 10,
      maxInstances: o.maxInstances ?? 3,
      queueLimit: o.queueLimit ?? 100,
    },
    timeouts: { start: o.start ?? '5s', request: o.request ?? '5s' },
    ...(o.auth ? { auth: { type: o.auth } } : {}),
    ...(o.rateLimit ? { rateLimit: o.rateLimit } : {}),
  })
}

export const TEST_PHASES: ColdStartPhases = { queueMs: 3, sandboxMs: 4, restoreMs: 25, readyMs: 6 }

export interface EchoServer {
  readonly address: InstanceAddress
  readonly server: Server
  /** Requests answered so far. */
  readonly count: () => number
  close(): Promise<void>
}

/** What the echo server answers for a plain request. */
export interface Echo {
  readonly label: string
  readonly method: string
  readonly url: string
  readonly headers: Record<string, string | string[] | undefined>
  readonly bodyBytes: number
}

/**
 * A stand-in instance on 127.0.0.1:0. `/status/<n>` answers n with a custom body and headers,
 * `/slow?ms=n` answers after n ms, `/stream` sends three chunks apart in time, `/gzip` a gzipped
 * body, `/die` drops the connection mid-body, `/reset` before any answer; anything else echoes the
 * request as JSON.
 */
export async function startEchoServer(label = 'echo'): Promise<EchoServer> {
  let count = 0
  const server = createServer((req: IncomingMessage, res) => {
    count++
    let bodyBytes = 0
    req.on('data', (chunk: Buffer) => (bodyBytes += chunk.length))
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://instance')
      const status = /^\/status\/(\d{3})$/.exec(url.pathname)?.[1]
      if (status) {
        res.writeHead(Number(status), {
          'content-type': 'text/x-custom',
          'x-fn': label,
          'server-timing': 'app;dur=5',
        })
        return res.end(`custom ${status}`)
      }
      if (url.pathname === '/gzip') {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-encoding': 'gzip' })
        return res.end(gzipSync('zipped body'))
      }
      if (url.pathname === '/die') {
        // Promise 100 bytes, send 7, then drop the connection: an instance crashing mid-response.
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100' })
        res.write('partial')
        setTimeout(() => res.socket?.destroy(), 20)
        return
      }
      if (url.pathname === '/reset') return void req.socket.destroy()
      if (url.pathname === '/stream') {
        res.writeHead(200, { 'content-type': 'text/plain' })
        res.write('one\n')
        setTimeout(() => res.write('two\n'), 30)
        setTimeout(() => res.end('three\n'), 60)
        return
      }
      const echo: Echo = {
        label,
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        bodyBytes,
      }
      const delay = Number(url.searchParams.get('ms') ?? 0)
      setTimeout(
        () => {
          res.writeHead(200, { 'content-type': 'application/json' })
          res.end(JSON.stringify(echo))
        },
        url.pathname === '/slow' ? delay : 0,
      )
    })
  })
  server.keepAliveTimeout = 5000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    address: { host: '127.0.0.1', port },
    server,
    count: () => count,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}

export interface TestGateway {
  readonly app: Gateway['app']
  /** The node:http listener over `app` (direct lane included), as gateway/main.ts serves it. */
  readonly listener: Gateway['listener']
  readonly registry: FakeRegistry
  readonly queue: FakeRestoreQueue
  readonly pool: InstancePool
  /** Echo servers started by restore(). */
  readonly servers: EchoServer[]
  /** Act as the executor for `job`: start an echo server, mark the instance ready, complete the job. */
  restore(job: RestoreJobData): Promise<EchoServer>
  close(): Promise<void>
}

export interface TestGatewayOptions {
  readonly manifests: readonly Manifest[]
  /** Restore every job as soon as it is enqueued. Default false. */
  readonly autoRestore?: boolean
  readonly registry?: FakeRegistry
  /** Default: the web forwarder (app.request() has no Node request for the node forwarder). */
  readonly forwarder?: Forwarder | ((agents: UpstreamAgents) => Forwarder)
  readonly pool?: Partial<Omit<InstancePoolDeps, 'registry' | 'queue' | 'logger'>>
  readonly options?: Partial<GatewayAppDeps['options']>
  readonly poolRegistry?: (r: FakeRegistry) => InstancePoolDeps['registry']
  readonly appRegistry?: GatewayAppDeps['registry'] & Partial<InstanceRegistry>
  readonly now?: () => number
  /** The admin API's lifecycle routes (deploy, versions, rollback, delete). */
  readonly lifecycle?: LifecycleRouteDeps
  readonly async?: GatewayAppDeps['async']
  readonly secrets?: GatewayAppDeps['secrets']
  /** Invocation keys and rate limits. */
  readonly access?: GatewayAppDeps['access']
  readonly deaths?: GatewayAppDeps['deaths']
}

/** A gateway app on the fakes, proxying with the web forwarder to real echo servers. */
export async function createTestGateway(o: TestGatewayOptions): Promise<TestGateway> {
  const logger = createSilentLogger()
  const registry = o.registry ?? createFakeRegistry()
  const queue = createFakeRestoreQueue()
  const agents = createUpstreamAgents()
  const pool = createInstancePool({
    registry: o.poolRegistry ? o.poolRegistry(registry) : registry,
    queue,
    logger,
    ...o.pool,
  })
  await pool.start()
  const servers: EchoServer[] = []
  const restore = async (job: RestoreJobData) => {
    const server = await startEchoServer(job.instanceId)
    servers.push(server)
    await registry.markReady(job.fn, job.instanceId, server.address, 'lazy', TEST_PHASES, 'host-test')
    queue.complete(job.instanceId)
    return server
  }
  const stopJobs = o.autoRestore ? queue.onJob((job) => void restore(job)) : undefined
  const { app, listener } = createGateway({
    catalog: createStaticCatalog(o.manifests),
    pool,
    registry: o.appRegistry ?? registry,
    forwarder:
      typeof o.forwarder === 'function'
        ? o.forwarder(agents)
        : (o.forwarder ?? createWebForwarder({ agents })),
    logger,
    options: { maxBodyBytes: 1024 * 1024, trustProxy: false, ...o.options },
    ...(o.now ? { now: o.now } : {}),
    ...(o.lifecycle ? { lifecycle: o.lifecycle } : {}),
    ...(o.async ? { async: o.async } : {}),
    ...(o.secrets ? { secrets: o.secrets } : {}),
    ...(o.access ? { access: o.access } : {}),
    ...(o.deaths ? { deaths: o.deaths } : {}),
  })
  return {
    app,
    listener,
    registry,
    queue,
    pool,
    servers,
    restore,
    async close() {
      stopJobs?.()
      await pool.close()
      agents.close()
      await Promise.all(servers.map((s) => s.close()))
    },
  }
}

export interface RawAnswer {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: string
  /** The connection ended with a reset (ECONNRESET) rather than a close. */
  readonly reset: boolean
}

/**
 * Send `data` over a fresh TCP connection (from `localAddress`, e.g. 127.0.0.2, to count as
 * another client) and read until the server closes; parse the first HTTP answer. Writes wait for
 * the socket to drain, as a client still sending would.
 */
export async function rawExchange(
  port: number,
  data: string | Buffer | readonly (string | Buffer)[],
  opts: {
    localAddress?: string
    timeoutMs?: number
    /** Pause between the parts of `data`. */
    holdMs?: number
    /** Read nothing until everything is sent (as curl does): a reset then loses the answer. */
    readAfterSend?: boolean
  } = {},
): Promise<RawAnswer> {
  const { connect } = await import('node:net')
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let reset = false
    const socket = connect({
      port,
      host: '127.0.0.1',
      ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
    })
    const timer = setTimeout(() => {
      socket.destroy()
      reject(
        new Error(
          `no close within ${opts.timeoutMs ?? 10_000} ms; got ${Buffer.concat(chunks).toString().slice(0, 200)}`,
        ),
      )
    }, opts.timeoutMs ?? 10_000)
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') reset = true
      else reject(err)
    })
    socket.on('close', () => {
      clearTimeout(timer)
      const text = Buffer.concat(chunks).toString('latin1')
      const head = text.indexOf('\r\n\r\n')
      const lines = (head < 0 ? text : text.slice(0, head)).split('\r\n')
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0)
      const headers: Record<string, string> = {}
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':')
        if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
      }
      resolve({ status, headers, body: head < 0 ? '' : text.slice(head + 4), reset })
    })
    if (opts.readAfterSend) socket.pause()
    socket.once('connect', () => {
      void (async () => {
        for (const part of typeof data === 'string' || Buffer.isBuffer(data) ? [data] : data) {
          if (socket.destroyed) return
          if (!socket.write(part)) await new Promise((r) => socket.once('drain', r))
          if (opts.holdMs) await new Promise((r) => setTimeout(r, opts.holdMs))
        }
      })()
        .catch(() => undefined)
        .finally(() => socket.resume())
    })
  })
}
