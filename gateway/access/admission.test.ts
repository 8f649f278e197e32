import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { generateApiKey } from '../../shared/api-keys.ts'
import type { Problem } from '../problem.ts'
import { createTestGateway, testManifest, type Echo, type TestGateway } from '../test-support.ts'
import { createTestAccess, type TestAccess } from './access-fake.ts'
import { bucketOf, clientOf, retryAfterSeconds } from './admission.ts'

const cleanups: (() => Promise<void>)[] = []
after(() => Promise.all(cleanups.map((c) => c())))

async function setUp(trustProxy = false): Promise<{ g: TestGateway; access: TestAccess }> {
  const access = await createTestAccess({ trustProxy })
  const g = await createTestGateway({
    manifests: [
      testManifest('locked', { auth: 'key' }),
      testManifest('other', { auth: 'key' }),
      testManifest('open'),
      testManifest('limited', { auth: 'key', rateLimit: { perClient: 1, burst: 2 } }),
      testManifest('shared', { rateLimit: { perFunction: 2, perClient: 100 } }),
    ],
    autoRestore: true,
    options: { trustProxy },
    access: access.deps,
  })
  cleanups.push(
    () => g.close(),
    () => access.close(),
  )
  return { g, access }
}

const problemOf = async (res: Response) => {
  assert.equal(res.headers.get('content-type'), 'application/problem+json')
  return (await res.json()) as Problem
}

describe('invocation keys', async () => {
  const { g, access } = await setUp()
  const { key, record } = await access.store.create('locked', { name: 'ci' })
  await access.cache.refreshOne('locked')

  test('no key: 401 ERR_KEY_REQUIRED with a Bearer challenge', async () => {
    const res = await g.app.request('/fn/locked/')
    assert.equal(res.status, 401)
    assert.equal((await problemOf(res)).code, 'ERR_KEY_REQUIRED')
    assert.equal(res.headers.get('www-authenticate'), 'Bearer realm="initless", scope="locked"')
    assert.equal(g.queue.jobs.length, 0, 'nothing was restored for a refused request')
  })

  const wrong: [string, Record<string, string>][] = [
    ['a well-formed key that does not exist', { 'x-api-key': generateApiKey().key }],
    ['a key with a known id and another secret', { 'x-api-key': `${key.slice(0, 17)}${'A'.repeat(43)}` }],
    ['a malformed key', { 'x-api-key': 'ilk_nothex' }],
    ['an empty X-Api-Key', { 'x-api-key': '' }],
    ['a Bearer token that is no key', { authorization: 'Bearer hunter2' }],
  ]
  for (const [what, headers] of wrong) {
    test(`${what}: 401 ERR_KEY_INVALID`, async () => {
      const res = await g.app.request('/fn/locked/', { headers })
      assert.equal(res.status, 401)
      assert.equal((await problemOf(res)).code, 'ERR_KEY_INVALID')
      assert.match(res.headers.get('www-authenticate') ?? '', /error="invalid_token"/)
    })
  }

  test("another function's key: 401", async () => {
    const res = await g.app.request('/fn/other/', { headers: { 'x-api-key': key } })
    assert.equal(res.status, 401)
    assert.equal((await problemOf(res)).code, 'ERR_KEY_INVALID')
  })

  test('X-Api-Key: 200, and the function never sees the key', async () => {
    const res = await g.app.request('/fn/locked/', { headers: { 'x-api-key': key } })
    assert.equal(res.status, 200)
    const echo = (await res.json()) as Echo
    assert.equal(echo.headers['x-api-key'], undefined)
    assert.ok(!JSON.stringify(echo).includes(key))
  })

  test('Authorization: Bearer: 200, Authorization is not passed on', async () => {
    const res = await g.app.request('/fn/locked/', { headers: { authorization: `Bearer ${key}` } })
    assert.equal(res.status, 200)
    const echo = (await res.json()) as Echo
    assert.equal(echo.headers.authorization, undefined)
  })

  test("X-Api-Key with the function's own Authorization: that one is passed on", async () => {
    const res = await g.app.request('/fn/locked/', {
      headers: { 'x-api-key': key, authorization: 'Basic dXNlcjpwdw==' },
    })
    assert.equal(res.status, 200)
    const echo = (await res.json()) as Echo
    assert.equal(echo.headers.authorization, 'Basic dXNlcjpwdw==')
    assert.equal(echo.headers['x-api-key'], undefined)
  })

  test('a function without auth passes X-Api-Key through untouched', async () => {
    const res = await g.app.request('/fn/open/', { headers: { 'x-api-key': 'its-own' } })
    assert.equal(res.status, 200)
    assert.equal(((await res.json()) as Echo).headers['x-api-key'], 'its-own')
  })

  test('a revoked key is refused as soon as the event arrives', async () => {
    const second = await access.store.create('locked')
    await access.cache.refreshOne('locked')
    assert.equal((await g.app.request('/fn/locked/', { headers: { 'x-api-key': second.key } })).status, 200)
    await access.store.revoke('locked', second.record.id)
    await new Promise((r) => setImmediate(r))
    await access.cache.refreshOne('locked')
    const res = await g.app.request('/fn/locked/', { headers: { 'x-api-key': second.key } })
    assert.equal(res.status, 401)
    // The first key is untouched.
    assert.equal((await g.app.request('/fn/locked/', { headers: { 'x-api-key': key } })).status, 200)
    assert.equal(record.name, 'ci')
  })
})

describe('rate limits', async () => {
  const { g, access } = await setUp()
  const a = await access.store.create('limited')
  const b = await access.store.create('limited')
  await access.cache.refreshOne('limited')

  test('per client: the burst passes, then 429 with Retry-After; another key is not limited', async () => {
    const call = (key: string) => g.app.request('/fn/limited/', { headers: { 'x-api-key': key } })
    assert.equal((await call(a.key)).status, 200)
    assert.equal((await call(a.key)).status, 200)
    const limited = await call(a.key)
    assert.equal(limited.status, 429)
    assert.equal((await problemOf(limited)).code, 'ERR_RATE_LIMITED')
    assert.equal(limited.headers.get('retry-after'), '1')
    assert.equal((await call(b.key)).status, 200, 'the other client has its own bucket')
    access.clock.now += 1000
    assert.equal((await call(a.key)).status, 200, 'one request a second refills')
    assert.equal((await call(a.key)).status, 429)
  })

  test('a request without a valid key takes nothing from any bucket', async () => {
    const before = access.limiter.calls.length
    assert.equal((await g.app.request('/fn/limited/')).status, 401)
    assert.equal(access.limiter.calls.length, before)
  })

  test('per function: every client shares the bucket; clients are source addresses without auth', async () => {
    access.clock.now += 60_000
    const statuses = []
    for (let i = 0; i < 3; i++) statuses.push((await g.app.request('/fn/shared/')).status)
    assert.deepEqual(statuses, [200, 200, 429])
    assert.deepEqual(access.limiter.calls.at(-1), { fn: 'shared', client: 'addr:unknown' })
  })

  test('the limiter out of reach lets requests through', async () => {
    access.limiter.setAvailable(false)
    try {
      assert.equal((await g.app.request('/fn/limited/', { headers: { 'x-api-key': b.key } })).status, 200)
    } finally {
      access.limiter.setAvailable(true)
    }
  })
})

describe('admission helpers', () => {
  test('Retry-After is whole seconds, rounded up, at least 1', () => {
    assert.deepEqual([0, 1, 999, 1000, 1001, 2500].map(retryAfterSeconds), [1, 1, 1, 1, 2, 3])
  })

  test('burst defaults to one second of the rate, at least 1', () => {
    assert.deepEqual(bucketOf(10, undefined), { rate: 10, burst: 10 })
    assert.deepEqual(bucketOf(0.5, undefined), { rate: 0.5, burst: 1 })
    assert.deepEqual(bucketOf(2.5, 7), { rate: 2.5, burst: 7 })
    assert.equal(bucketOf(undefined, 7), undefined)
  })

  test('the client is the key id, else the address (the last proxy hop when trusted)', () => {
    const req = (xff?: string) => ({
      header: (n: string) => (n === 'x-forwarded-for' ? xff : undefined),
      remoteAddress: '10.0.0.9',
    })
    assert.equal(clientOf(req(), 'abc', false), 'key:abc')
    assert.equal(clientOf(req('1.1.1.1'), undefined, false), 'addr:10.0.0.9')
    assert.equal(clientOf(req('6.6.6.6, 1.1.1.1'), undefined, true), 'addr:1.1.1.1')
    assert.equal(clientOf(req(), undefined, true), 'addr:10.0.0.9')
  })
})
