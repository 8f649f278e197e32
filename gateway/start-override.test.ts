import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import type { Problem } from './problem.ts'
import { createTestGateway, testManifest, type TestGateway } from './test-support.ts'

const TOKEN = 'test-admin-token-0123456789'
const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }

describe('admin start override (PUT/DELETE /admin/functions/<fn>/runtime)', async () => {
  const g: TestGateway = await createTestGateway({
    manifests: [testManifest('alpha', { maxInstances: 10 }), testManifest('beta', { maxInstances: 10 })],
    options: { adminToken: TOKEN },
  })
  after(() => g.close())

  const put = (fn: string, body: string) =>
    g.app.request(`/admin/functions/${fn}/runtime`, { method: 'PUT', headers: auth, body })
  const prewarm = async (fn: string) => {
    const res = await g.app.request(`/admin/functions/${fn}/scale`, {
      method: 'POST',
      headers: auth,
      body: JSON.stringify({ instances: 1 }),
    })
    assert.equal(res.status, 202)
    return g.queue.jobs.at(-1)!
  }

  test('restores started after PUT carry the runtime and noPool; other functions are untouched', async () => {
    const res = await put('alpha', JSON.stringify({ runtime: 'docker', noPool: true }))
    assert.equal(res.status, 200)
    assert.deepEqual(await res.json(), { fn: 'alpha', startOverride: { runtime: 'docker', noPool: true } })
    const job = await prewarm('alpha')
    assert.equal(job.runtime, 'docker')
    assert.equal(job.noPool, true)
    const other = await prewarm('beta')
    assert.equal(other.runtime, undefined)
    assert.equal(other.noPool, undefined)
  })

  test('GET /admin/functions shows the override; DELETE clears it', async () => {
    const list = async () => {
      const res = await g.app.request('/admin/functions', { headers: auth })
      const { functions } = (await res.json()) as { functions: { name: string; startOverride: unknown }[] }
      return Object.fromEntries(functions.map((f) => [f.name, f.startOverride]))
    }
    assert.deepEqual(await list(), { alpha: { runtime: 'docker', noPool: true }, beta: null })
    const res = await g.app.request('/admin/functions/alpha/runtime', { method: 'DELETE', headers: auth })
    assert.equal(res.status, 200)
    assert.deepEqual(await list(), { alpha: null, beta: null })
    const job = await prewarm('alpha')
    assert.equal(job.runtime, undefined)
    assert.equal(job.noPool, undefined)
  })

  test('an empty override is no override', async () => {
    assert.equal((await put('alpha', '{}')).status, 200)
    assert.equal((await prewarm('alpha')).runtime, undefined)
  })

  test('bad bodies are 400, unknown functions 404, no token 401', async () => {
    for (const body of ['nope', '{"runtime":"fast"}', '{"noPool":"yes"}', '{"runtime":"lazy","x":1}']) {
      const res = await put('alpha', body)
      assert.equal(res.status, 400, body)
      assert.equal(((await res.json()) as Problem).code, 'ERR_GATEWAY_BAD_REQUEST')
    }
    assert.equal((await put('nope', '{"runtime":"lazy"}')).status, 404)
    const res = await g.app.request('/admin/functions/alpha/runtime', {
      method: 'PUT',
      body: '{"runtime":"lazy"}',
    })
    assert.equal(res.status, 401)
  })
})
