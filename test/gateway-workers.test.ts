/**
 * The multi-process gateway (INITLESS_GATEWAY_WORKERS=3) as gateway/main.ts runs it: the built
 * primary and its workers on one port, real Redis, a function in the function registry whose one
 * instance (a real HTTP server here, marked ready in the registry) takes one request at a time.
 * Checks that its scaling.concurrency holds across the workers, that a killed worker's slot is
 * released and the worker replaced, that /metrics adds up all workers, that a burst from zero
 * split across them starts as many instances as one process would, and a clean shutdown.
 */
import assert from 'node:assert/strict'
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { createServer, request, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, describe, test } from 'node:test'
import { startProcess, type ManagedProcess } from '../cli/launcher.ts'
import { createRedisFunctionRegistry } from '../shared/function-registry.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { createRedis } from '../shared/redis.ts'
import { createRedisRegistry } from '../shared/registry.ts'
import { instancesToStart } from '../gateway/scaling.ts'
import { TEST_PHASES, testManifest } from '../gateway/test-support.ts'
import { cleanUp, isolation, REDIS_URL, redisSkipReason, startFakeExecutor } from './gateway-harness.ts'

const skip = await redisSkipReason()
const WORKERS = 3

/** Child pids of `pid` (from /proc). */
function childrenOf(pid: number): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1]?.split(' ')[1] === String(pid)
      } catch {
        return false
      }
    })
    .map(Number)
}

const hexPort = (port: number) => `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`

/**
 * The pid among `pids` that owns the TCP socket bound to 127.0.0.1:`port` (/proc/net/tcp) and
 * connected to 127.0.0.1:`peer`. Only sockets with an inode count: an ephemeral port may also
 * appear in a closed connection's TIME_WAIT entry (inode 0) towards another address, which
 * repeated fresh connections on a busy machine make likely.
 */
function socketOwner(port: number, pids: readonly number[], peer: number): number | undefined {
  const inode = readFileSync('/proc/net/tcp', 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find((f) => f[1] === hexPort(port) && f[2] === hexPort(peer) && f[9] !== '0')?.[9]
  if (!inode) return undefined
  return pids.find((pid) => {
    try {
      return readdirSync(`/proc/${pid}/fd`).some((fd) => {
        try {
          return readlinkSync(`/proc/${pid}/fd/${fd}`) === `socket:[${inode}]`
        } catch {
          return false
        }
      })
    } catch {
      return false
    }
  })
}

interface Answer {
  readonly status: number
  readonly body: string
}

/**
 * GET on a fresh connection (so node:cluster hands each request to the next worker); `connected`
 * gets the connection's local port.
 */
function get(url: string, timeoutMs = 10_000, connected?: (port: number) => void): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, timeout: timeoutMs }, (res: IncomingMessage) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    req.on('socket', (socket) => socket.once('connect', () => connected?.(socket.localPort ?? 0)))
    req.end()
  })
}

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const { port } = s.address() as AddressInfo
  await new Promise((r) => s.close(r))
  return port
}

describe('multi-process gateway', { skip }, () => {
  const iso = isolation()
  const redis = createRedis(REDIS_URL, { name: 'test-workers' })
  const manifest = testManifest('one', { concurrency: 1, maxInstances: 1, start: '10s', request: '10s' })
  let instance: Server
  const instancePort = () => (instance.address() as AddressInfo).port
  let gateway: ManagedProcess
  let base: string
  let inflight = 0
  let most = 0
  /**
   * The worker that sent each request the instance served, in order, looked up while its
   * connection is open (a closed one leaves no owner to find).
   */
  const servedBy: (number | undefined)[] = []
  let workerPids: number[] = []
  const upstreamOwner = (port: number) => {
    const owner = socketOwner(port, workerPids, instancePort())
    if (owner !== undefined) return owner
    workerPids = childrenOf(gateway.child.pid ?? 0)
    return socketOwner(port, workerPids, instancePort())
  }
  /** Which worker (pid) enqueued each restore of `fn`, for failure messages. */
  const enqueuedBy = (fn: string) =>
    gateway
      .records()
      .filter((r) => r.msg === 'restore enqueued' && r.fn === fn)
      .map((r) => r.pid)
  /** Requests to /hold wait here until released. */
  const held: (() => void)[] = []

  before(async () => {
    instance = createServer((req, res) => {
      inflight++
      most = Math.max(most, inflight)
      servedBy.push(upstreamOwner(req.socket.remotePort ?? 0))
      const done = () => {
        inflight--
        res.end(`served ${req.url}`)
      }
      if (req.url === '/hold') held.push(done)
      else setTimeout(done, 5)
    })
    await new Promise<void>((r) => instance.listen(0, '127.0.0.1', r))
    const address = { host: '127.0.0.1', port: (instance.address() as AddressInfo).port }

    const logger = createSilentLogger()
    const functions = createRedisFunctionRegistry({ redis, logger, prefix: iso.prefix })
    await functions.putVersion('one', {
      version: 'v1',
      manifest,
      state: 'ready',
      createdAt: Date.now(),
      contextBytes: 0,
      bakedOn: {},
    })
    assert.equal(await functions.activate('one', 'v1'), true)
    const registry = createRedisRegistry({ redis, logger, prefix: iso.prefix })
    assert.equal(await registry.reserve('one', 1, 'i1', 'test-host'), true)
    assert.equal(await registry.markReady('one', 'i1', address, 'lazy', TEST_PHASES, 'test-host', 'v1'), true)

    const port = await freePort()
    base = `http://127.0.0.1:${port}`
    gateway = startProcess('gateway', 'gateway', {
      env: {
        INITLESS_REDIS_URL: REDIS_URL,
        INITLESS_KEY_PREFIX: iso.prefix,
        INITLESS_QUEUE_NAME: iso.queueName,
        INITLESS_GATEWAY_HOST: '127.0.0.1',
        INITLESS_GATEWAY_PORT: String(port),
        INITLESS_GATEWAY_WORKERS: String(WORKERS),
        INITLESS_SHUTDOWN_TIMEOUT: '3s',
        INITLESS_LOG_LEVEL: 'info',
      },
      keepOutput: true,
    })
    // Every worker listens (each logs it once).
    const deadline = Date.now() + 30_000
    while (gateway.records().filter((r) => r.msg === 'gateway listening').length < WORKERS) {
      if (!gateway.isRunning() || Date.now() > deadline)
        throw new Error(`gateway workers did not start:\n${gateway.output()}`)
      await new Promise((r) => setTimeout(r, 100))
    }
  })

  after(async () => {
    if (gateway?.isRunning()) await gateway.stop('SIGKILL', 5000)
    for (const release of held.splice(0)) release()
    instance?.closeAllConnections()
    await new Promise((r) => instance?.close(r))
    await cleanUp(redis, iso)
    redis.disconnect()
  })

  test('scaling.concurrency 1 holds across the workers under parallel load', async () => {
    const answers = await Promise.all(Array.from({ length: 60 }, (_, i) => get(`${base}/fn/one/r${i}`)))
    assert.deepEqual(
      answers.filter((a) => a.status !== 200),
      [],
    )
    assert.equal(most, 1)
    // The requests really went through several workers (each has its own upstream connections).
    const workers = childrenOf(gateway.child.pid ?? 0)
    assert.equal(workers.length, WORKERS)
    const owners = servedBy.filter((o) => o === undefined || workers.includes(o))
    const distinct = new Set(owners.filter((o) => o !== undefined))
    assert.ok(distinct.size >= 2, `served by ${distinct.size} worker(s): ${JSON.stringify(owners)}`)
  })

  test('/metrics adds up the requests of every worker', async () => {
    const before = servedBy.length
    await Promise.all(Array.from({ length: 12 }, (_, i) => get(`${base}/fn/one/m${i}`)))
    assert.equal(servedBy.length - before, 12)
    // A request is counted just after its answer went out: allow the last ones a moment.
    let lines: string[] = []
    let total = 0
    for (const until = Date.now() + 2000; total !== servedBy.length && Date.now() < until;) {
      lines = (await get(`${base}/metrics`)).body
        .split('\n')
        .filter((l) => l.startsWith('initless_gateway_invocations_total{') && l.includes('function="one"'))
      total = lines.reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0)
    }
    assert.equal(total, servedBy.length, lines.join('\n'))
  })

  test("a killed worker's slot is released and the worker replaced", async () => {
    const workers = childrenOf(gateway.child.pid ?? 0)
    const holding = get(`${base}/fn/one/hold`).catch((err: Error) => err)
    const deadline = Date.now() + 5000
    while (!held.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
    assert.equal(held.length, 1)
    const owner = servedBy.at(-1)
    assert.ok(owner && workers.includes(owner), 'the worker holding the request')
    const deaths = () => gateway.records().filter((r) => r.msg === 'gateway worker died; starting another')
    const diedBefore = deaths().length
    process.kill(owner, 'SIGKILL')
    assert.ok((await holding) instanceof Error, 'the client of the killed worker loses its request')
    // node:cluster's primary hands each new connection to a worker it counts as alive: one handed
    // to the killed worker before the primary saw it die is lost, and its client waits for its
    // timeout (docs/architecture.md, known limits). The next requests go once the primary knows.
    for (const until = Date.now() + 10_000; deaths().length === diedBefore;) {
      assert.ok(Date.now() < until, 'the primary saw the worker die')
      await new Promise((r) => setTimeout(r, 10))
    }
    // The instance still works on the held request; the next ones get the slot anyway once the
    // ledger dropped the dead worker's hold (the instance's own request is its business).
    held.shift()?.()
    const next = await Promise.all(Array.from({ length: 6 }, () => get(`${base}/fn/one/after`)))
    assert.deepEqual(
      next.map((a) => a.status),
      [200, 200, 200, 200, 200, 200],
    )
    assert.equal(most, 1)
    const replaced = Date.now() + 10_000
    while (childrenOf(gateway.child.pid ?? 0).length < WORKERS && Date.now() < replaced)
      await new Promise((r) => setTimeout(r, 100))
    const now = childrenOf(gateway.child.pid ?? 0)
    assert.equal(now.length, WORKERS)
    assert.ok(!now.includes(owner))
  })

  // Concurrency 50: one instance takes the burst. Concurrency 4: it needs five, which workers that
  // each scale on their own part of it do not start.
  for (const concurrency of [50, 4]) {
    test(`a burst from zero split across the workers, concurrency ${concurrency}: what one process starts`, async () => {
      const name = `burst${concurrency}`
      const burst = testManifest(name, { concurrency, maxInstances: 10, start: '10s', request: '10s' })
      const functions = createRedisFunctionRegistry({
        redis,
        logger: createSilentLogger(),
        prefix: iso.prefix,
      })
      await functions.putVersion(name, {
        version: 'v1',
        manifest: burst,
        state: 'ready',
        createdAt: Date.now(),
        contextBytes: 0,
        bakedOn: {},
      })
      assert.equal(await functions.activate(name, 'v1'), true)
      // Every worker reads the function first, on an instance that then goes away: each is ready to
      // scale at once when the burst comes, as a gateway that served the function before is.
      const registry = createRedisRegistry({ redis, logger: createSilentLogger(), prefix: iso.prefix })
      const address = { host: '127.0.0.1', port: (instance.address() as AddressInfo).port }
      assert.equal(await registry.reserve(name, 10, 'w1', 'test-host'), true)
      assert.equal(
        await registry.markReady(name, 'w1', address, 'lazy', TEST_PHASES, 'test-host', 'v1'),
        true,
      )
      const first = servedBy.length
      const workers = childrenOf(gateway.child.pid ?? 0)
      const warmed = new Set<number | undefined>()
      // A worker that replaced the killed one gets connections once it listens: a few rounds, each
      // within the instance's concurrency (more would make the gateway start an instance now).
      const batch = Math.min(concurrency, 2 * WORKERS)
      for (const until = Date.now() + 5000; warmed.size < WORKERS && Date.now() < until;) {
        const warm = await Promise.all(
          Array.from({ length: batch }, (_, i) => get(`${base}/fn/${name}/w${i}`)),
        )
        assert.deepEqual(
          warm.map((a) => a.status),
          Array(batch).fill(200),
        )
        for (const o of servedBy.slice(first)) warmed.add(o)
        warmed.delete(undefined)
      }
      assert.equal(warmed.size, WORKERS, 'every worker served the function')
      assert.deepEqual(
        (await registry.list(name)).map((r) => r.id),
        ['w1'],
        `the warm-up started nothing; enqueued by ${JSON.stringify(enqueuedBy(name))}`,
      )
      assert.equal(await registry.remove(name, 'w1'), true)
      await new Promise((r) => setTimeout(r, 300))
      // Restores take long enough for the whole burst to arrive while the first is on its way.
      const executor = startFakeExecutor(iso, { restoreMs: 800, version: 'v1' })
      try {
        const requests = 20
        const clientPorts: number[] = []
        const answers = Promise.all(
          Array.from({ length: requests }, (_, i) =>
            get(`${base}/fn/${name}/b${i}`, 10_000, (p) => clientPorts.push(p)),
          ),
        )
        // While they wait: which worker holds each request's connection.
        const connected = Date.now() + 5000
        while (clientPorts.length < requests && Date.now() < connected)
          await new Promise((r) => setTimeout(r, 10))
        const port = Number(new URL(base).port)
        const owners = new Set(clientPorts.map((p) => socketOwner(port, workers, p)))
        owners.delete(undefined)
        assert.ok(owners.size >= 2, `the burst reached ${owners.size} worker(s)`)

        assert.deepEqual(
          (await answers).filter((a) => a.status !== 200),
          [],
        )
        // The scaling rule of one gateway process, for the whole burst at once.
        const expected = instancesToStart({
          ready: [],
          starting: 0,
          waiting: requests,
          concurrency: burst.scaling.concurrency,
          maxInstances: burst.scaling.maxInstances,
        })
        assert.equal(expected, concurrency === 50 ? 1 : 5)
        assert.equal(
          executor.jobs.filter((j) => j.fn === name).length,
          expected,
          `by ${JSON.stringify(enqueuedBy(name))}`,
        )
        assert.equal((await registry.list(name)).length, expected)
      } finally {
        await executor.close()
      }
    })
  }

  test('SIGTERM drains every worker and exits 0', async () => {
    const workers = childrenOf(gateway.child.pid ?? 0)
    const exit = await gateway.stop('SIGTERM', 15_000)
    assert.deepEqual(exit, { code: 0, signal: null }, gateway.output().split('\n').slice(-30).join('\n'))
    for (const pid of workers) assert.throws(() => process.kill(pid, 0), 'worker still running')
  })
})
