import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import type { Problem } from './problem.ts'
import { isTokenValid } from './routes/admin.ts'
import { createTestGateway, testManifest, type TestGateway } from './test-support.ts'

const TOKEN = 'test-admin-token-0123456789'
const auth = { authorization: `Bearer ${TOKEN}` }
const gateways: TestGateway[] = []
after(() => Promise.all(gateways.map((g) => g.close())))

async function gateway(adminToken: string | undefined) {
  const g = await createTestGateway({
    manifests: [testManifest('alpha', { maxInstances: 2 }), testManifest('beta')],
    options: { adminToken },
  })
  gateways.push(g)
  return g
}

const codeOf = async (res: Response) => ((await res.json()) as Problem).code

describe('admin api', async () => {
  const g = await gateway(TOKEN)

  test('without a configured token every admin route is 404', async () => {
    const off = await gateway(undefined)
    for (const path of ['/admin/functions', '/admin/instances', '/admin/anything']) {
      const res = await off.app.request(path, { headers: auth })
      assert.equal(res.status, 404)
      assert.equal(await codeOf(res), 'ERR_GATEWAY_NOT_FOUND')
    }
  })

  test('missing or wrong token is 401 with a Bearer challenge', async () => {
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: TOKEN }] as Record<
      string,
      string
    >[]) {
      const res = await g.app.request('/admin/functions', { headers })
      assert.equal(res.status, 401)
      assert.equal(await codeOf(res), 'ERR_GATEWAY_UNAUTHORIZED')
      assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer/)
    }
  })

  test('GET /admin/functions lists the catalog with pool state', async () => {
    const res = await g.app.request('/admin/functions', { headers: auth })
    assert.equal(res.status, 200)
    const { functions } = (await res.json()) as { functions: { name: string; ready: number }[] }
    assert.deepEqual(
      functions.map((f) => [f.name, f.ready]),
      [
        ['alpha', 0],
        ['beta', 0],
      ],
    )
  })

  test('scale n>0 pre-warms (bounded by maxInstances); instances are listed', async () => {
    const res = await g.app.request('/admin/functions/alpha/scale', {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ instances: 3 }),
    })
    assert.equal(res.status, 202)
    const body = (await res.json()) as { started: string[] }
    assert.equal(body.started.length, 2)
    assert.deepEqual(
      g.queue.jobs.map((j) => [j.fn, j.reason]),
      [
        ['alpha', 'prewarm'],
        ['alpha', 'prewarm'],
      ],
    )
    const listed = await g.app.request('/admin/instances', { headers: auth })
    const { instances } = (await listed.json()) as { instances: { id: string; state: string }[] }
    assert.deepEqual(instances.map((i) => i.id).sort(), [...body.started].sort())
    assert.ok(instances.every((i) => i.state === 'starting'))
  })

  test('scale 0 publishes scale-to-zero; rebake publishes rebake', async () => {
    const zero = await g.app.request('/admin/functions/beta/scale', {
      method: 'POST',
      headers: auth,
      body: JSON.stringify({ instances: 0 }),
    })
    assert.equal(zero.status, 202)
    const rebake = await g.app.request('/admin/functions/beta/rebake', { method: 'POST', headers: auth })
    assert.equal(rebake.status, 202)
    assert.deepEqual(g.registry.events.slice(-2), [
      { type: 'function', fn: 'beta', action: 'scale-to-zero' },
      { type: 'function', fn: 'beta', action: 'rebake' },
    ])
  })

  test('bad bodies are 400, unknown functions 404', async () => {
    for (const body of ['not json', '{}', '{"instances":-1}', '{"instances":1.5}', '{"instances":1,"x":2}']) {
      const res = await g.app.request('/admin/functions/alpha/scale', { method: 'POST', headers: auth, body })
      assert.equal(res.status, 400, body)
      assert.equal(await codeOf(res), 'ERR_GATEWAY_BAD_REQUEST')
    }
    const res = await g.app.request('/admin/functions/nope/rebake', { method: 'POST', headers: auth })
    assert.equal(res.status, 404)
    assert.equal(await codeOf(res), 'ERR_FUNCTION_NOT_FOUND')
  })

  test('registry down is a 503, not a 500', async () => {
    g.registry.setAvailable(false)
    const res = await g.app.request('/admin/instances', { headers: auth })
    g.registry.setAvailable(true)
    assert.equal(res.status, 503)
  })
})

test('isTokenValid', () => {
  assert.equal(isTokenValid(`Bearer ${TOKEN}`, TOKEN), true)
  assert.equal(isTokenValid(`bearer   ${TOKEN}`, TOKEN), true)
  assert.equal(isTokenValid(`Bearer ${TOKEN}x`, TOKEN), false)
  assert.equal(isTokenValid(`Basic ${TOKEN}`, TOKEN), false)
  assert.equal(isTokenValid(undefined, TOKEN), false)
  assert.equal(isTokenValid('Bearer ', TOKEN), false)
})
