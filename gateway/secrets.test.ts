import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { manifestSchema } from '../shared/manifest.ts'
import { createFakeSecretStore } from '../shared/secret-store-fake.ts'
import { createSecretSealer } from '../shared/secret-crypto.ts'
import { SECRET_MAX_BYTES } from '../shared/secrets.ts'
import { createStaticCatalog } from './catalog.ts'
import type { Problem } from './problem.ts'
import { createTestGateway, testManifest, type TestGateway } from './test-support.ts'

const TOKEN = 'test-admin-token-0123456789'
const auth = { authorization: `Bearer ${TOKEN}` }
const gateways: TestGateway[] = []
after(() => Promise.all(gateways.map((g) => g.close())))

const withSecrets = manifestSchema.parse({ name: 'reader', port: 8080, secrets: ['token', 'shared/db-url'] })
const VALUE = 'hunter2-value-never-echoed'

describe('admin api: /admin/secrets', async () => {
  const store = createFakeSecretStore({ sealer: createSecretSealer(Buffer.alloc(32, 7)), now: () => 1000 })
  const manifests = [withSecrets, testManifest('plain')]
  const g = await createTestGateway({
    manifests,
    options: { adminToken: TOKEN },
    secrets: { store, catalog: createStaticCatalog(manifests), encrypted: true },
  })
  gateways.push(g)
  const put = async (path: string, body: string | Buffer): Promise<Response> =>
    g.app.request(`/admin/secrets/${path}`, { method: 'PUT', headers: auth, body })

  test('without the bearer token: 401, nothing stored', async () => {
    const res = await g.app.request('/admin/secrets/reader/token', { method: 'PUT', body: VALUE })
    assert.equal(res.status, 401)
    assert.equal(store.raw.size, 0)
  })

  test('PUT creates (201) then replaces (200); answers never carry the value', async () => {
    const first = await put('reader/token', VALUE)
    assert.equal(first.status, 201)
    const text = await first.text()
    assert.ok(!text.includes(VALUE), text)
    assert.deepEqual(JSON.parse(text), {
      scope: 'reader',
      name: 'token',
      updatedAt: 1000,
      created: true,
      encrypted: true,
    })
    assert.equal((await put('reader/token', 'second')).status, 200)
    // Sealed at rest: the stored form holds neither value.
    const raw = JSON.stringify([...store.raw.values()])
    assert.ok(
      !raw.includes(VALUE) &&
        !raw.includes('second') &&
        !raw.includes(Buffer.from('second').toString('base64')),
    )
  })

  test('a shared scope a function lists is accepted; list shows names and times only', async () => {
    assert.equal((await put('shared/db-url', 'postgres://x')).status, 201)
    const res = await g.app.request('/admin/secrets', { headers: auth })
    assert.equal(res.status, 200)
    const text = await res.text()
    assert.ok(!text.includes('postgres') && !text.includes(VALUE))
    assert.deepEqual(JSON.parse(text), {
      secrets: [
        { scope: 'reader', name: 'token', updatedAt: 1000 },
        { scope: 'shared', name: 'db-url', updatedAt: 1000 },
      ],
      encrypted: true,
    })
    const one = (await (await g.app.request('/admin/secrets?scope=shared', { headers: auth })).json()) as {
      secrets: unknown[]
    }
    assert.equal(one.secrets.length, 1)
  })

  const cases: [string, () => Response | Promise<Response>, number, string][] = [
    ['unknown function or scope', () => put('no-such-fn/token', 'x'), 404, 'ERR_FUNCTION_NOT_FOUND'],
    ['bad name (leading dot)', () => put('reader/.hidden', 'x'), 400, 'ERR_SECRET_NAME_INVALID'],
    ['bad name (encoded slash)', () => put('reader/a%2Fb', 'x'), 400, 'ERR_SECRET_NAME_INVALID'],
    ['bad scope (upper case)', () => put('Reader/token', 'x'), 400, 'ERR_SECRET_NAME_INVALID'],
    ['empty value', () => put('reader/token', ''), 400, 'ERR_SECRET_VALUE_INVALID'],
    [
      'value over the limit',
      () => put('reader/token', Buffer.alloc(SECRET_MAX_BYTES + 1, 97)),
      413,
      'ERR_SECRET_TOO_LARGE',
    ],
    [
      'body over the admin limit',
      () => put('reader/token', Buffer.alloc(70_000, 97)),
      413,
      'ERR_GATEWAY_BODY_TOO_LARGE',
    ],
    [
      'bad scope in a listing',
      () => g.app.request('/admin/secrets?scope=..', { headers: auth }),
      400,
      'ERR_SECRET_NAME_INVALID',
    ],
    [
      'removing what does not exist',
      () => g.app.request('/admin/secrets/reader/nope', { method: 'DELETE', headers: auth }),
      404,
      'ERR_SECRET_NOT_FOUND',
    ],
    [
      'another method',
      () => g.app.request('/admin/secrets/reader/token', { method: 'POST', headers: auth, body: 'x' }),
      404,
      'ERR_GATEWAY_NOT_FOUND',
    ],
  ]
  for (const [what, call, status, code] of cases)
    test(`bad input: ${what} -> ${status} ${code}, nothing changed`, async () => {
      const before = JSON.stringify([...store.raw.entries()])
      const res = await call()
      assert.equal(res.status, status)
      assert.match(res.headers.get('content-type') ?? '', /application\/problem\+json/)
      assert.equal(((await res.json()) as Problem).code, code)
      assert.equal(JSON.stringify([...store.raw.entries()]), before)
    })

  test('DELETE removes', async () => {
    const res = await g.app.request('/admin/secrets/shared/db-url', { method: 'DELETE', headers: auth })
    assert.equal(res.status, 200)
    assert.deepEqual(await store.missing([{ scope: 'shared', name: 'db-url' }]), [
      { scope: 'shared', name: 'db-url' },
    ])
  })
})
