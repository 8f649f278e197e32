import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { gunzipSync } from 'node:zlib'
import { createFakeInstanceDeaths } from '../shared/instance-deaths-fake.ts'
import type { Forwarder } from './forwarder.ts'
import { createFakeRegistry } from '../shared/registry-fake.ts'
import { createDeathReports } from './instance-deaths.ts'
import { createGatewayMetrics } from './metrics.ts'
import type { Problem } from './problem.ts'
import { createTestGateway, testManifest, type Echo, type TestGateway } from './test-support.ts'

const gateways: TestGateway[] = []
after(() => Promise.all(gateways.map((g) => g.close())))

async function gateway(...args: Parameters<typeof createTestGateway>): Promise<TestGateway> {
  const g = await createTestGateway(...args)
  gateways.push(g)
  return g
}

async function problem(res: Response, status: number, code: string): Promise<Problem> {
  assert.equal(res.status, status)
  assert.equal(res.headers.get('content-type'), 'application/problem+json')
  const body = (await res.json()) as Problem
  assert.equal(body.code, code)
  assert.equal(body.status, status)
  return body
}

describe('invoke route', async () => {
  const g = await gateway({
    manifests: [testManifest('hello'), testManifest('slow', { request: '100ms' })],
    autoRestore: true,
    options: { maxBodyBytes: 1000 },
  })

  test('a cold request is held until its instance is ready, then proxied with the prefix stripped', async () => {
    const res = await g.app.request('/fn/hello/a/b?x=1&y=2', { headers: { 'x-request-id': 'req-cold-1' } })
    assert.equal(res.status, 200)
    const echo = (await res.json()) as Echo
    assert.equal(echo.url, '/a/b?x=1&y=2')
    assert.equal(echo.headers['x-request-id'], 'req-cold-1')
    assert.equal(res.headers.get('x-request-id'), 'req-cold-1')
    assert.match(
      res.headers.get('server-timing') ?? '',
      /^cold, wait;dur=[\d.]+, queue;dur=3, sandbox;dur=4, restore;dur=25, ready;dur=6, upstream;dur=[\d.]+$/,
    )
    assert.equal(g.queue.jobs.length, 1)
    assert.equal(echo.label, g.queue.jobs[0]?.instanceId)
  })

  test('a warm request reuses the instance and says so', async () => {
    const res = await g.app.request('/fn/hello')
    const echo = (await res.json()) as Echo
    assert.equal(echo.url, '/')
    assert.match(res.headers.get('server-timing') ?? '', /^warm, upstream;dur=[\d.]+$/)
    assert.match(res.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/)
    assert.equal(g.queue.jobs.length, 1)
  })

  test('the function’s own responses pass through untouched', async () => {
    const res = await g.app.request('/fn/hello/status/418')
    assert.equal(res.status, 418)
    assert.equal(await res.text(), 'custom 418')
    assert.equal(res.headers.get('content-type'), 'text/x-custom')
    assert.equal(res.headers.get('x-fn'), g.queue.jobs[0]?.instanceId)
    assert.match(res.headers.get('server-timing') ?? '', /^app;dur=5, warm, /)
    const zipped = await g.app.request('/fn/hello/gzip')
    assert.equal(zipped.headers.get('content-encoding'), 'gzip')
    assert.equal(gunzipSync(Buffer.from(await zipped.arrayBuffer())).toString(), 'zipped body')
    const streamed = await g.app.request('/fn/hello/stream')
    assert.equal(await streamed.text(), 'one\ntwo\nthree\n')
  })

  test('hop-by-hop headers stay behind; X-Forwarded-* from the client are replaced', async () => {
    const res = await g.app.request('/fn/hello/h', {
      method: 'POST',
      body: 'twelve bytes',
      headers: {
        connection: 'x-hop',
        'x-hop': 'secret',
        te: 'trailers',
        'x-forwarded-for': '6.6.6.6',
        'x-forwarded-host': 'evil.example',
        'x-request-id': 'bad id with spaces',
        'content-type': 'text/plain',
      },
    })
    const echo = (await res.json()) as Echo
    assert.equal(echo.method, 'POST')
    assert.equal(echo.bodyBytes, 12)
    assert.equal(echo.headers['x-hop'], undefined)
    assert.equal(echo.headers.te, undefined)
    assert.equal(echo.headers['x-forwarded-for'], undefined, 'no peer address under app.request')
    assert.equal(echo.headers['x-forwarded-host'], 'localhost')
    assert.equal(echo.headers['x-forwarded-proto'], 'http')
    assert.equal(echo.headers['content-type'], 'text/plain')
    assert.notEqual(echo.headers['x-request-id'], 'bad id with spaces')
  })

  test('404 for invalid and unknown function names and other paths', async () => {
    await problem(await g.app.request('/fn/Hello/x'), 404, 'ERR_FUNCTION_NAME_INVALID')
    await problem(await g.app.request('/fn/a%2Fb/x'), 404, 'ERR_FUNCTION_NAME_INVALID')
    await problem(await g.app.request('/fn/%2e%2e%2fadmin/x'), 404, 'ERR_FUNCTION_NAME_INVALID')
    await problem(await g.app.request('/fn/-bad/x'), 404, 'ERR_FUNCTION_NAME_INVALID')
    await problem(await g.app.request('/fn/nope/x'), 404, 'ERR_FUNCTION_NOT_FOUND')
    await problem(await g.app.request('/fn/../admin/functions'), 404, 'ERR_GATEWAY_NOT_FOUND')
    const body = await problem(await g.app.request('/elsewhere'), 404, 'ERR_GATEWAY_NOT_FOUND')
    assert.match(body.requestId, /^[0-9a-f-]{36}$/)
  })

  test('413 before proxying when Content-Length is over the limit', async () => {
    const before = g.servers.reduce((n, s) => n + s.count(), 0)
    const res = await g.app.request('/fn/hello/up', {
      method: 'POST',
      body: 'x'.repeat(1001),
      headers: { 'content-length': '1001' },
    })
    await problem(res, 413, 'ERR_GATEWAY_BODY_TOO_LARGE')
    assert.equal(
      g.servers.reduce((n, s) => n + s.count(), 0),
      before,
    )
  })

  test('413 when a chunked body grows over the limit while streaming', async () => {
    const chunks = [600, 600].map((n) => new TextEncoder().encode('y'.repeat(n)))
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = chunks.shift()
        if (next) controller.enqueue(next)
        else controller.close()
      },
    })
    const req = new Request('http://localhost/fn/hello/up', {
      method: 'POST',
      body,
      duplex: 'half',
    })
    assert.equal(req.headers.get('content-length'), null)
    await problem(await g.app.request(req), 413, 'ERR_GATEWAY_BODY_TOO_LARGE')
  })

  test('504 when the function does not answer within timeouts.request', async () => {
    await problem(await g.app.request('/fn/slow/slow?ms=1000'), 504, 'ERR_GATEWAY_TIMEOUT')
  })

  test('metrics count invocations, cold-start phases and queue depth', async () => {
    const text = await (await g.app.request('/metrics')).text()
    assert.match(text, /initless_gateway_invocations_total\{function="hello",status="200",start="cold"\} 1/)
    assert.match(text, /initless_gateway_invocations_total\{function="hello",status="418",start="warm"\} 1/)
    assert.match(text, /initless_gateway_invocations_total\{function="hello",status="413",start="none"\} 1/)
    assert.match(
      text,
      /initless_gateway_cold_start_phase_seconds_count\{function="hello",phase="restore"\} 1/,
    )
    assert.match(text, /initless_gateway_queue_depth\{function="hello"\} 0/)
    assert.match(text, /initless_gateway_instances\{function="hello",state="ready"\} 1/)
    // One restore and several answers seen: both moving averages of the scale-up rule are set.
    assert.match(text, /initless_gateway_scaling_estimate_seconds\{function="hello",estimate="restore"\} \d/)
    assert.match(text, /initless_gateway_scaling_estimate_seconds\{function="hello",estimate="service"\} \d/)
  })
})

describe('dead instances', async () => {
  const g = await gateway({ manifests: [testManifest('fragile', { maxInstances: 3 })], autoRestore: true })

  test('a refused GET is retried once on another instance; a refused POST with a body is a 502', async () => {
    assert.equal((await g.app.request('/fn/fragile/')).status, 200)
    await g.servers[0]?.close()
    const res = await g.app.request('/fn/fragile/again')
    assert.equal(res.status, 200)
    assert.equal(((await res.json()) as Echo).label, g.queue.jobs[1]?.instanceId)
    await g.servers[1]?.close()
    const post = await g.app.request('/fn/fragile/p', { method: 'POST', body: 'payload' })
    await problem(post, 502, 'ERR_GATEWAY_UPSTREAM_FAILED')
    assert.equal(g.queue.jobs.length, 2)
  })
})

describe('instance deaths', () => {
  /** A gateway whose deaths store is a fake the test records deaths in, as the executor would. */
  async function abused() {
    const deaths = createFakeInstanceDeaths()
    const registry = createFakeRegistry()
    const g = await gateway({
      manifests: [testManifest('abused', { maxInstances: 3, request: '300ms' })],
      autoRestore: true,
      registry,
      deaths: createDeathReports({ deaths, registry, waitMs: 1000 }),
    })
    return { g, deaths, registry }
  }

  test('a connection broken by a dead instance answers ERR_INSTANCE_DIED with the recorded reason', async () => {
    const { g, deaths } = await abused()
    // The executor records the death a little after the connection broke.
    const recorded = g.queue.waitForJobs(1).then(() =>
      setTimeout(() => {
        const id = g.queue.jobs[0]!.instanceId
        void deaths.record({ id, fn: 'abused', reason: 'oom-killed', detail: 'memory limit', at: 1 })
      }, 100),
    )
    const res = await g.app.request('/fn/abused/reset', { method: 'POST', body: 'x' })
    await recorded
    const body = (await problem(res, 502, 'ERR_INSTANCE_DIED')) as Problem & Record<string, unknown>
    assert.equal(body['reason'], 'oom-killed')
    assert.equal(body['instanceId'], g.queue.jobs[0]!.instanceId)
    assert.match(String(body.detail), /memory limit/)
  })

  test('without a recorded death, the broken connection stays ERR_GATEWAY_UPSTREAM_FAILED', async () => {
    const { g } = await abused()
    const started = Date.now()
    const res = await g.app.request('/fn/abused/reset', { method: 'POST', body: 'x' })
    await problem(res, 502, 'ERR_GATEWAY_UPSTREAM_FAILED')
    assert.ok(Date.now() - started >= 900, 'it waited for a report')
  })

  test('a request past timeouts.request is a 504 and recycles its instance', async () => {
    const { g, deaths, registry } = await abused()
    await problem(await g.app.request('/fn/abused/slow?ms=2000'), 504, 'ERR_GATEWAY_TIMEOUT')
    const id = g.queue.jobs[0]!.instanceId
    assert.deepEqual(
      deaths.recorded.map((d) => [d.id, d.reason]),
      [[id, 'request-timeout']],
    )
    assert.deepEqual(await registry.list('abused'), [], 'the instance left the registry')
    const metrics = createGatewayMetrics({ stats: () => [], deathCounts: () => deaths.counts() })
    assert.match(
      await metrics.registry.metrics(),
      /initless_instance_deaths_total\{function="abused",reason="request-timeout"\} 1/,
    )
  })
})

describe('capacity', async () => {
  test('503 with Retry-After when the queue is full, 504 when the restore takes too long', async () => {
    const g = await gateway({ manifests: [testManifest('busy', { queueLimit: 1, start: '150ms' })] })
    const held = g.app.request('/fn/busy/')
    await g.queue.waitForJobs(1)
    const full = await g.app.request('/fn/busy/')
    await problem(full, 503, 'ERR_GATEWAY_NO_CAPACITY')
    assert.equal(full.headers.get('retry-after'), '1')
    await problem(await held, 504, 'ERR_GATEWAY_TIMEOUT')
  })

  test('an unexpected error is a 500 that does not leak its message', async () => {
    const broken: Forwarder = { forward: () => Promise.reject(new Error('secret internals at /var/lib')) }
    const g = await gateway({ manifests: [testManifest('oops')], autoRestore: true, forwarder: broken })
    const res = await g.app.request('/fn/oops/')
    const body = await problem(res, 500, 'ERR_INTERNAL')
    assert.doesNotMatch(JSON.stringify(body), /secret|var\/lib/)
  })
})
