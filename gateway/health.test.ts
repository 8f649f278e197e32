import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import type { Problem } from './problem.ts'
import { createTestGateway, testManifest } from './test-support.ts'

test('healthz is always 200; readyz needs Redis and a fresh executor heartbeat', async () => {
  let now = 1_000_000
  const g = await createTestGateway({ manifests: [testManifest('f')], now: () => now })
  after(() => g.close())
  assert.equal((await g.app.request('/healthz')).status, 200)

  const none = await g.app.request('/readyz')
  assert.equal(none.status, 503)
  assert.equal(none.headers.get('content-type'), 'application/problem+json')
  assert.match(((await none.json()) as Problem).detail, /no executor heartbeat/)

  await g.registry.beat({ hostId: 'exec-1', at: now - 500, pid: 1, functions: ['f'] })
  const ready = await g.app.request('/readyz')
  assert.equal(ready.status, 200)
  assert.deepEqual(await ready.json(), { status: 'ready', executors: ['exec-1'] })

  now += 3000
  assert.equal((await g.app.request('/readyz')).status, 503, 'a heartbeat 3.5 s old is stale')

  now -= 3000
  g.registry.setAvailable(false)
  const down = await g.app.request('/readyz')
  g.registry.setAvailable(true)
  assert.equal(down.status, 503)
  assert.match(((await down.json()) as Problem).detail, /Redis unreachable/)
  assert.equal((await g.app.request('/healthz')).status, 200)
})

test('metrics are served in the Prometheus text format', async () => {
  const g = await createTestGateway({ manifests: [testManifest('f')] })
  after(() => g.close())
  const res = await g.app.request('/metrics')
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain/)
  assert.match(await res.text(), /# TYPE initless_gateway_invocations_total counter/)
})
