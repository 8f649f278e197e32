import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { API_KEY_RE } from '../../shared/api-keys.ts'
import { createTestAccess } from '../access/access-fake.ts'
import type { Problem } from '../problem.ts'
import { createTestGateway, testManifest } from '../test-support.ts'

const TOKEN = 'test-admin-token-0123456789'
const auth = { authorization: `Bearer ${TOKEN}` }

describe('admin key routes', async () => {
  const access = await createTestAccess()
  const g = await createTestGateway({
    manifests: [testManifest('locked', { auth: 'key' }), testManifest('open')],
    options: { adminToken: TOKEN },
    access: access.deps,
  })
  after(() => Promise.all([g.close(), access.close()]))
  const codeOf = async (res: Response) => ((await res.json()) as Problem).code

  test('create answers the key once; list shows ids and labels, never keys or hashes', async () => {
    const res = await g.app.request('/admin/functions/locked/keys', {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'ci runner' }),
    })
    assert.equal(res.status, 201)
    assert.equal(res.headers.get('cache-control'), 'no-store')
    const created = (await res.json()) as {
      id: string
      key: string
      name: string
      auth: string
      hash?: string
    }
    assert.match(created.key, API_KEY_RE)
    assert.equal(created.name, 'ci runner')
    assert.equal(created.auth, 'key')
    assert.equal(created.hash, undefined)
    assert.equal(
      access.cache.verify('locked', created.key),
      created.id,
      'this gateway knows it on the answer',
    )

    const list = await g.app.request('/admin/functions/locked/keys', { headers: auth })
    const text = await list.text()
    assert.equal(list.status, 200)
    assert.ok(!text.includes(created.key) && !text.includes('hash'), text)
    const body = JSON.parse(text) as { keys: { id: string; name: string }[]; auth: string }
    assert.deepEqual(
      body.keys.map((k) => [k.id, k.name]),
      [[created.id, 'ci runner']],
    )

    const revoked = await g.app.request(`/admin/functions/locked/keys/${created.id}`, {
      method: 'DELETE',
      headers: auth,
    })
    assert.equal(revoked.status, 200)
    assert.equal(access.cache.verify('locked', created.key), undefined)
    const again = await g.app.request(`/admin/functions/locked/keys/${created.id}`, {
      method: 'DELETE',
      headers: auth,
    })
    assert.equal(again.status, 404)
    assert.equal(await codeOf(again), 'ERR_KEY_NOT_FOUND')
  })

  test('a key for a function without auth can be made ahead (the answer says auth none)', async () => {
    const res = await g.app.request('/admin/functions/open/keys', { method: 'POST', headers: auth })
    assert.equal(res.status, 201)
    assert.equal(((await res.json()) as { auth: string }).auth, 'none')
  })

  const bad: [string, string, RequestInit, number, string][] = [
    [
      'unknown function (create)',
      '/admin/functions/nope/keys',
      { method: 'POST' },
      404,
      'ERR_FUNCTION_NOT_FOUND',
    ],
    ['unknown function (list)', '/admin/functions/nope/keys', {}, 404, 'ERR_FUNCTION_NOT_FOUND'],
    ['invalid function name', '/admin/functions/No_Such/keys', {}, 404, 'ERR_FUNCTION_NAME_INVALID'],
    [
      'body not JSON',
      '/admin/functions/locked/keys',
      { method: 'POST', body: '{name:' },
      400,
      'ERR_GATEWAY_BAD_REQUEST',
    ],
    [
      'unknown field',
      '/admin/functions/locked/keys',
      { method: 'POST', body: '{"secret":"x"}' },
      400,
      'ERR_GATEWAY_BAD_REQUEST',
    ],
    [
      'name not a string',
      '/admin/functions/locked/keys',
      { method: 'POST', body: '{"name":5}' },
      400,
      'ERR_GATEWAY_BAD_REQUEST',
    ],
    [
      'name with a newline',
      '/admin/functions/locked/keys',
      { method: 'POST', body: '{"name":"a\\nb"}' },
      400,
      'ERR_GATEWAY_BAD_REQUEST',
    ],
    [
      'name too long',
      '/admin/functions/locked/keys',
      { method: 'POST', body: JSON.stringify({ name: 'x'.repeat(101) }) },
      400,
      'ERR_GATEWAY_BAD_REQUEST',
    ],
    [
      'a JSON array',
      '/admin/functions/locked/keys',
      { method: 'POST', body: '[]' },
      400,
      'ERR_GATEWAY_BAD_REQUEST',
    ],
    [
      'malformed key id',
      '/admin/functions/locked/keys/xyz',
      { method: 'DELETE' },
      400,
      'ERR_GATEWAY_BAD_REQUEST',
    ],
    [
      'unknown key id',
      '/admin/functions/locked/keys/0123456789ab',
      { method: 'DELETE' },
      404,
      'ERR_KEY_NOT_FOUND',
    ],
    [
      'body over the admin limit',
      '/admin/functions/locked/keys',
      { method: 'POST', body: 'x'.repeat(70_000) },
      413,
      'ERR_GATEWAY_BODY_TOO_LARGE',
    ],
  ]
  for (const [what, path, init, status, code] of bad) {
    test(`${what}: ${status} ${code}`, async () => {
      const res = await g.app.request(path, { ...init, headers: auth })
      assert.equal(res.status, status)
      assert.equal(res.headers.get('content-type'), 'application/problem+json')
      assert.equal(await codeOf(res), code)
    })
  }

  test('without the admin token: 401, nothing created', async () => {
    const before = (await access.store.list('locked')).length
    const res = await g.app.request('/admin/functions/locked/keys', { method: 'POST' })
    assert.equal(res.status, 401)
    assert.equal(await codeOf(res), 'ERR_GATEWAY_UNAUTHORIZED')
    assert.equal((await access.store.list('locked')).length, before)
  })

  test('the key store out of reach: 503 with Retry-After', async () => {
    access.store.setAvailable(false)
    try {
      const res = await g.app.request('/admin/functions/locked/keys', { method: 'POST', headers: auth })
      assert.equal(res.status, 503)
      assert.equal(res.headers.get('retry-after'), '1')
    } finally {
      access.store.setAvailable(true)
    }
  })
})
