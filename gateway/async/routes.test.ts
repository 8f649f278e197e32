import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { manifestSchema } from '../../shared/manifest.ts'
import { createTestGateway, testManifest, type TestGateway } from '../test-support.ts'
import { createCallbackPolicy } from './callback-target.ts'
import { createFakeInvocationStore } from './invocation-store-fake.ts'

const small = manifestSchema.parse({ name: 'small', port: 8080, async: { maxBody: '1Ki', queueLimit: 2 } })

describe('async routes', async () => {
  const store = createFakeInvocationStore()
  const accepted: string[] = []
  const g: TestGateway = await createTestGateway({
    manifests: [testManifest('echo'), small],
    options: { adminToken: 'a-token-of-16-chars-or-more' },
    async: {
      store,
      callbacks: createCallbackPolicy({ allow: [], instanceSubnets: ['10.213.0.0/16'] }),
      onAccepted: (fn) => accepted.push(fn),
      now: () => 1000,
    },
  })
  after(() => g.close())

  const problem = async (res: Response, status: number, code: string) => {
    assert.equal(res.status, status)
    assert.equal(res.headers.get('content-type'), 'application/problem+json')
    assert.equal(((await res.json()) as { code: string }).code, code)
  }

  test('202 with X-Invocation-Id and Location; the request is stored without acceptance headers', async () => {
    const res = await g.app.request('/async-function/echo/a/b?x=1', {
      method: 'POST',
      headers: {
        'content-type': 'text/plain',
        'x-custom': 'yes',
        connection: 'close',
        'idempotency-key': 'k1',
      },
      body: 'hello',
    })
    assert.equal(res.status, 202)
    const body = (await res.json()) as { id: string; location: string }
    assert.equal(res.headers.get('x-invocation-id'), body.id)
    assert.equal(res.headers.get('location'), `/invocations/${body.id}`)
    const d = store.stored.get(body.id)!
    assert.equal(d.fn, 'echo')
    assert.equal(d.request.method, 'POST')
    assert.equal(d.request.path, '/a/b?x=1')
    assert.equal(Buffer.from(d.request.body, 'base64').toString(), 'hello')
    assert.equal(d.request.headers['x-custom'], 'yes')
    assert.equal(d.request.headers['content-length'], '5')
    for (const h of ['connection', 'idempotency-key', 'prefer', 'host'])
      assert.equal(d.request.headers[h], undefined, h)
    assert.equal(d.idempotencyKey, 'k1')
    assert.equal(d.acceptedAt, 1000)
    assert.deepEqual(accepted, ['echo'])
    const read = await g.app.request(`/invocations/${body.id}`)
    assert.equal(read.status, 200)
    assert.equal(((await read.json()) as { state: string }).state, 'queued')
  })

  test('Prefer: respond-async on /fn/ is accepted; other preferences are served synchronously', async () => {
    const res = await g.app.request('/fn/echo/x', {
      method: 'POST',
      headers: { prefer: 'wait=5, respond-async' },
    })
    assert.equal(res.status, 202)
    assert.equal(res.headers.get('preference-applied'), 'respond-async')
    const id = res.headers.get('x-invocation-id')!
    assert.equal(store.stored.get(id)?.request.path, '/x')
  })

  test('the same Idempotency-Key and request give the same invocation; another request 422', async () => {
    const send = (body: string) =>
      g.app.request('/async-function/echo/', { method: 'POST', headers: { 'idempotency-key': 'same' }, body })
    const a = (await (await send('one')).json()) as { id: string; isDuplicate: boolean }
    const b = (await (await send('one')).json()) as { id: string; isDuplicate: boolean }
    assert.equal(a.id, b.id)
    assert.equal(b.isDuplicate, true)
    await problem(await send('two'), 422, 'ERR_ASYNC_IDEMPOTENCY_CONFLICT')
    const bad = await g.app.request('/async-function/echo/', {
      method: 'POST',
      headers: { 'idempotency-key': 'a b' },
    })
    await problem(bad, 400, 'ERR_GATEWAY_BAD_REQUEST')
  })

  test('refusals are problem+json: 404, 413, 400 callback, 503 queue full and unavailable', async () => {
    const before = store.stored.size
    await problem(
      await g.app.request('/async-function/nope/', { method: 'POST' }),
      404,
      'ERR_FUNCTION_NOT_FOUND',
    )
    await problem(
      await g.app.request('/async-function/Bad/', { method: 'POST' }),
      404,
      'ERR_FUNCTION_NAME_INVALID',
    )
    await problem(await g.app.request('/invocations/echo.00000000-0000'), 404, 'ERR_INVOCATION_NOT_FOUND')
    const big = await g.app.request('/async-function/small/', { method: 'POST', body: 'x'.repeat(2000) })
    await problem(big, 413, 'ERR_GATEWAY_BODY_TOO_LARGE')
    const chunked = new ReadableStream({
      start(c) {
        c.enqueue(new Uint8Array(800))
        c.enqueue(new Uint8Array(800))
        c.close()
      },
    })
    const streamed = await g.app.request('/async-function/small/', {
      method: 'POST',
      body: chunked,
      duplex: 'half',
    })
    await problem(streamed, 413, 'ERR_GATEWAY_BODY_TOO_LARGE')
    for (const url of [
      'http://127.0.0.1/',
      'http://169.254.169.254/',
      'http://10.213.0.9:8080/',
      'gopher://x/',
    ]) {
      const res = await g.app.request('/async-function/echo/', {
        method: 'POST',
        headers: { 'x-callback-url': url },
      })
      await problem(res, 400, 'ERR_ASYNC_CALLBACK_REFUSED')
    }
    for (let i = 0; i < 2; i++)
      assert.equal((await g.app.request('/async-function/small/', { method: 'POST' })).status, 202)
    const full = await g.app.request('/async-function/small/', { method: 'POST' })
    assert.equal(full.headers.get('retry-after'), '1')
    await problem(full, 503, 'ERR_ASYNC_QUEUE_FULL')
    store.isDown = true
    try {
      await problem(
        await g.app.request('/async-function/echo/', { method: 'POST' }),
        503,
        'ERR_ASYNC_UNAVAILABLE',
      )
    } finally {
      store.isDown = false
    }
    assert.equal(store.stored.size, before + 2, 'nothing refused was stored')
  })

  test('the admin routes need the token and check their input', async () => {
    assert.equal((await g.app.request('/admin/invocations')).status, 401)
    const auth = { authorization: 'Bearer a-token-of-16-chars-or-more' }
    const listed = await g.app.request('/admin/invocations?fn=small', { headers: auth })
    assert.equal(listed.status, 200)
    assert.equal(((await listed.json()) as { invocations: unknown[] }).invocations.length, 2)
    await problem(
      await g.app.request('/admin/invocations?state=odd', { headers: auth }),
      400,
      'ERR_GATEWAY_BAD_REQUEST',
    )
    await problem(
      await g.app.request('/admin/functions/small/invocations?state=odd', {
        method: 'DELETE',
        headers: auth,
      }),
      400,
      'ERR_GATEWAY_BAD_REQUEST',
    )
    // The synchronous admin API is still there.
    assert.equal((await g.app.request('/admin/functions', { headers: auth })).status, 200)
  })
})
