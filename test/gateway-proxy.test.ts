/**
 * The gateway end to end on real Redis and BullMQ, proxying with the node:http forwarder over real sockets; a
 * stand-in executor consumes the restore queue and serves each instance from a real HTTP server.
 */
import assert from 'node:assert/strict'
import { request } from 'node:http'
import { after, before, describe, test } from 'node:test'
import type { Echo } from '../gateway/test-support.ts'
import { testManifest } from '../gateway/test-support.ts'
import type { Problem } from '../gateway/problem.ts'
import { createRedis } from '../shared/redis.ts'
import {
  cleanUp,
  isolation,
  REDIS_URL,
  redisSkipReason,
  startFakeExecutor,
  startGateway,
  type FakeExecutor,
  type RunningGateway,
} from './gateway-harness.ts'

const skip = await redisSkipReason()

const SLOW_RESTORE_MS = 600

async function problemOf(res: Response, status: number, code: string): Promise<Problem> {
  assert.equal(res.status, status)
  assert.equal(res.headers.get('content-type'), 'application/problem+json')
  const body = (await res.json()) as Problem
  assert.equal(body.code, code)
  return body
}

/** POST a chunked body (no Content-Length) of `chunks` x `size` bytes; resolves with the status. */
function postChunked(url: string, chunks: number, size: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    let sent = 0
    const pump = () => {
      if (sent === chunks) return req.end()
      sent++
      req.write(Buffer.alloc(size, 0x61), () => setTimeout(pump, 2))
    }
    pump()
  })
}

describe('gateway over real Redis and BullMQ', { skip }, () => {
  const iso = isolation()
  const redis = createRedis(REDIS_URL, { name: 'test-cleanup' })
  let executor: FakeExecutor
  let gw: RunningGateway

  before(async () => {
    executor = startFakeExecutor(iso, {
      restoreMs: (job) => (['late', 'abort', 'tiny', 'burst'].includes(job.fn) ? SLOW_RESTORE_MS : 30),
      failWith: (job) =>
        job.fn === 'broken'
          ? { code: 'ERR_RESTORE_FAILED', message: 'runc restore exited with status 1', retryable: true }
          : job.fn === 'nosnap'
            ? { code: 'ERR_SNAPSHOT_NOT_FOUND', message: 'no snapshot for nosnap', retryable: false }
            : undefined,
    })
    gw = await startGateway(
      iso,
      [
        testManifest('hello', { concurrency: 10, maxInstances: 3 }),
        testManifest('burst', { concurrency: 10, maxInstances: 20 }),
        testManifest('tiny', { queueLimit: 1 }),
        testManifest('late', { start: '150ms' }),
        testManifest('abort', { queueLimit: 1 }),
        testManifest('fragile', { maxInstances: 3 }),
        testManifest('broken'),
        testManifest('nosnap'),
      ],
      { maxBodyBytes: 64 * 1024 },
    )
  })
  after(async () => {
    await gw?.close()
    await executor?.close()
    await cleanUp(redis, iso)
    redis.disconnect()
  })

  test('a cold request is held until its instance is ready, then answered', async () => {
    const res = await fetch(`${gw.url}/fn/hello/some/path?q=1`, { headers: { 'x-request-id': 'cold-1' } })
    assert.equal(res.status, 200)
    const echo = (await res.json()) as Echo
    assert.equal(echo.url, '/some/path?q=1')
    assert.equal(echo.headers['x-forwarded-for'], '127.0.0.1')
    assert.equal(echo.headers['x-request-id'], 'cold-1')
    assert.equal(res.headers.get('x-request-id'), 'cold-1')
    assert.match(
      res.headers.get('server-timing') ?? '',
      /^cold, wait;dur=[\d.]+, queue;dur=3, sandbox;dur=4, restore;dur=25, ready;dur=6, upstream;dur=[\d.]+$/,
    )
    assert.equal(executor.jobs.filter((j) => j.fn === 'hello').length, 1)
    const job = executor.jobs.find((j) => j.fn === 'hello')
    assert.equal(job?.traceId, 'cold-1')
    assert.equal(echo.label, job?.instanceId)

    const warm = await fetch(`${gw.url}/fn/hello/`)
    assert.match(warm.headers.get('server-timing') ?? '', /^warm, upstream;dur=/)
    await warm.arrayBuffer()
    const head = await fetch(`${gw.url}/fn/hello/`, { method: 'HEAD' })
    assert.equal(head.status, 200)
    assert.equal(head.headers.get('content-type'), 'application/json')
    assert.match(head.headers.get('server-timing') ?? '', /^warm/)
    assert.equal(await head.text(), '')
  })

  test('bodies stream both ways', async () => {
    const upload = await fetch(`${gw.url}/fn/hello/upload`, { method: 'PUT', body: Buffer.alloc(60_000, 1) })
    assert.equal(((await upload.json()) as Echo).bodyBytes, 60_000)
    const chunked = await postChunked(`${gw.url}/fn/hello/chunked`, 10, 1000)
    assert.equal(chunked.status, 200)
    assert.equal((JSON.parse(chunked.body) as Echo).bodyBytes, 10_000)
    const stream = await fetch(`${gw.url}/fn/hello/stream`)
    assert.equal(await stream.text(), 'one\ntwo\nthree\n')
    const teapot = await fetch(`${gw.url}/fn/hello/status/418`)
    assert.equal(teapot.status, 418)
    assert.equal(teapot.headers.get('content-type'), 'text/x-custom')
    assert.equal(await teapot.text(), 'custom 418')
  })

  test('100 concurrent requests to a cold function start exactly the restores needed', async () => {
    // Each instance holds its requests for a while, so all 100 are in flight at once.
    const responses = await Promise.all(
      Array.from({ length: 100 }, () => fetch(`${gw.url}/fn/burst/slow?ms=300`)),
    )
    const labels = await Promise.all(responses.map(async (r) => ((await r.json()) as Echo).label))
    assert.deepEqual(
      responses.map((r) => r.status),
      Array(100).fill(200),
    )
    assert.equal(executor.jobs.filter((j) => j.fn === 'burst').length, 10)
    assert.equal(new Set(labels).size, 10)
    assert.equal((await gw.registry.list('burst')).length, 10)
  })

  test('queue full: 503 with Retry-After', async () => {
    const held = fetch(`${gw.url}/fn/tiny/`)
    await until(() => gw.pool.stats().find((s) => s.fn === 'tiny')?.waiting === 1)
    const full = await fetch(`${gw.url}/fn/tiny/`)
    await problemOf(full, 503, 'ERR_GATEWAY_NO_CAPACITY')
    assert.equal(full.headers.get('retry-after'), '1')
    assert.equal((await held).status, 200)
  })

  test('waiting longer than timeouts.start: 504', async () => {
    const started = Date.now()
    await problemOf(await fetch(`${gw.url}/fn/late/`), 504, 'ERR_GATEWAY_TIMEOUT')
    assert.ok(Date.now() - started < SLOW_RESTORE_MS)
  })

  test('a client that aborts while waiting frees its place', async () => {
    const ac = new AbortController()
    const aborted = fetch(`${gw.url}/fn/abort/`, { signal: ac.signal }).catch((e: Error) => e.name)
    await until(() => gw.pool.stats().find((s) => s.fn === 'abort')?.waiting === 1)
    ac.abort()
    assert.equal(await aborted, 'AbortError')
    await until(() => gw.pool.stats().find((s) => s.fn === 'abort')?.waiting === 0)
    const next = await fetch(`${gw.url}/fn/abort/`)
    assert.equal(next.status, 200, 'queueLimit 1 has room again')
    await next.arrayBuffer()
  })

  test('413 for a large Content-Length and for a chunked body that grows too large', async () => {
    const big = await fetch(`${gw.url}/fn/hello/up`, { method: 'POST', body: Buffer.alloc(64 * 1024 + 1) })
    await problemOf(big, 413, 'ERR_GATEWAY_BODY_TOO_LARGE')
    const chunked = await postChunked(`${gw.url}/fn/hello/up`, 100, 1024)
    assert.equal(chunked.status, 413)
    assert.equal((JSON.parse(chunked.body) as Problem).code, 'ERR_GATEWAY_BODY_TOO_LARGE')
  })

  test('404 for bad and unknown names', async () => {
    await problemOf(await fetch(`${gw.url}/fn/UPPER/x`), 404, 'ERR_FUNCTION_NAME_INVALID')
    await problemOf(await fetch(`${gw.url}/fn/a%2Fb/x`), 404, 'ERR_FUNCTION_NAME_INVALID')
    await problemOf(await fetch(`${gw.url}/fn/missing/x`), 404, 'ERR_FUNCTION_NOT_FOUND')
    await problemOf(await fetch(`${gw.url}/fn/hello%00/x`), 404, 'ERR_FUNCTION_NAME_INVALID')
    await problemOf(await fetch(`${gw.url}/admin/functions`), 404, 'ERR_GATEWAY_NOT_FOUND')
  })

  test('an instance that dies: GET is retried on a new instance, a POST with a body is a 502', async () => {
    assert.equal((await fetch(`${gw.url}/fn/fragile/`)).status, 200)
    const first = executor.jobs.filter((j) => j.fn === 'fragile')
    assert.equal(first.length, 1)
    await executor.servers.get(first[0]!.instanceId)?.close()
    const retried = await fetch(`${gw.url}/fn/fragile/`)
    assert.equal(retried.status, 200)
    const jobs = executor.jobs.filter((j) => j.fn === 'fragile')
    assert.equal(jobs.length, 2)
    assert.equal(((await retried.json()) as Echo).label, jobs[1]?.instanceId)
    await executor.servers.get(jobs[1]!.instanceId)?.close()
    await problemOf(
      await fetch(`${gw.url}/fn/fragile/`, { method: 'POST', body: 'data' }),
      502,
      'ERR_GATEWAY_UPSTREAM_FAILED',
    )
  })

  test('failed restores: retried on new instances, then the job’s error; non-retryable codes at once', async () => {
    const broken = await problemOf(await fetch(`${gw.url}/fn/broken/`), 502, 'ERR_RESTORE_FAILED')
    assert.match(broken.detail, /runc restore exited with status 1/)
    assert.equal(executor.jobs.filter((j) => j.fn === 'broken').length, 3, 'first try + 2 retries')
    const nosnap = await problemOf(await fetch(`${gw.url}/fn/nosnap/`), 503, 'ERR_SNAPSHOT_NOT_FOUND')
    assert.match(nosnap.detail, /no snapshot for nosnap/)
    assert.equal(executor.jobs.filter((j) => j.fn === 'nosnap').length, 1)
    assert.deepEqual(await gw.registry.list('broken'), [])
  })

  test('an instance dying mid-response cuts the client off instead of leaving it hanging', async () => {
    const res = await fetch(`${gw.url}/fn/hello/die`)
    assert.equal(res.status, 200)
    await assert.rejects(res.text())
    assert.equal((await fetch(`${gw.url}/healthz`)).status, 200)
  })

  test('readyz sees the executor heartbeat; metrics count cold starts', async () => {
    assert.equal((await fetch(`${gw.url}/readyz`)).status, 200)
    const metrics = await (await fetch(`${gw.url}/metrics`)).text()
    assert.match(
      metrics,
      /initless_gateway_invocations_total\{function="burst",status="200",start="cold"\} \d+/,
    )
    assert.match(
      metrics,
      /initless_gateway_cold_start_phase_seconds_count\{function="burst",phase="restore"\} 10/,
    )
  })
})

async function until(cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 5))
  }
}
