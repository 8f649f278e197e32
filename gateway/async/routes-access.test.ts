import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { createTestAccess } from '../access/access-fake.ts'
import { createTestGateway, testManifest } from '../test-support.ts'
import { createCallbackPolicy } from './callback-target.ts'
import { createFakeInvocationStore } from './invocation-store-fake.ts'

describe('async routes with keys and rate limits', async () => {
  const store = createFakeInvocationStore()
  const access = await createTestAccess()
  const g = await createTestGateway({
    manifests: [testManifest('locked', { auth: 'key', rateLimit: { perClient: 1, burst: 2 } })],
    async: { store, callbacks: createCallbackPolicy({ allow: [], instanceSubnets: ['10.213.0.0/16'] }) },
    access: access.deps,
  })
  after(() => Promise.all([g.close(), access.close()]))
  const { key } = await access.store.create('locked')
  await access.cache.refreshOne('locked')
  const codeOf = async (res: Response) => ((await res.json()) as { code: string }).code

  test('accepting needs the key, on /async-function and with Prefer: respond-async', async () => {
    for (const [path, headers] of [
      ['/async-function/locked/', {}],
      ['/fn/locked/', { prefer: 'respond-async' }],
    ] as const) {
      const res = await g.app.request(path, { method: 'POST', headers, body: 'x' })
      assert.equal(res.status, 401, path)
      assert.equal(await codeOf(res), 'ERR_KEY_REQUIRED')
      assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer/)
    }
    assert.equal(store.stored.size, 0, 'nothing was stored')
  })

  test('accepted with the key, which is not stored with the request; reading it needs the key', async () => {
    const res = await g.app.request('/async-function/locked/', {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'x-custom': 'kept' },
      body: 'x',
    })
    assert.equal(res.status, 202)
    const { id } = (await res.json()) as { id: string }
    const stored = store.stored.get(id)
    assert.equal(stored?.request.headers['x-custom'], 'kept')
    assert.equal(stored?.request.headers.authorization, undefined)
    assert.ok(!JSON.stringify(stored).includes(key))
    assert.equal((await g.app.request(`/invocations/${id}`)).status, 401)
    assert.equal((await g.app.request(`/invocations/${id}`, { headers: { 'x-api-key': key } })).status, 200)
  })

  test('accepting is rate limited: 429 with Retry-After once the burst is spent', async () => {
    const send = () =>
      g.app.request('/fn/locked/', { method: 'POST', headers: { 'x-api-key': key, prefer: 'respond-async' } })
    // One of the burst of 2 went to the previous test.
    assert.equal((await send()).status, 202)
    const refused = await send()
    assert.equal(refused.status, 429)
    assert.equal(refused.headers.get('retry-after'), '1')
    assert.equal(await codeOf(refused), 'ERR_RATE_LIMITED')
  })
})
